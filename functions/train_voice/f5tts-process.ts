/**
 * Runs one F5-TTS command (a Python process and whatever it starts) for a job: output split into lines on
 * `\r` and `\n` as tqdm draws them, a terminal-like tail of stderr for the job's error, and on abort the
 * whole process tree stopped (SIGTERM, a grace, SIGKILL) and waited for.
 *
 * The engine is spawned in the job process's own process group (not `detached`), so the host's kill of that
 * group reaches it even if this process dies first. The handler cannot signal its own group without
 * killing itself, so on abort it signals the engine's tree: `accelerate launch` does not forward SIGTERM
 * to the trainer it starts (its simple launcher just waits on it), and the trainer has 16 DataLoader
 * workers of its own.
 */
import { spawn } from 'node:child_process'
import { existsSync, readFileSync } from 'node:fs'
import { readdir, readFile } from 'node:fs/promises'
import { StringDecoder } from 'node:string_decoder'

/** How many stderr lines a failure keeps (a tqdm redraw overwrites the line it redraws, as on a terminal). */
export const STDERR_TAIL_LINES = 100

export interface EngineRun {
  /** Exit code, or null when a signal ended it. */
  code: number | null
  signal: NodeJS.Signals | null
  /** The last lines of stderr, oldest first. */
  stderrTail: string[]
}

export interface EngineCommand {
  command: string
  args: string[]
  cwd: string
  env: NodeJS.ProcessEnv
  signal: AbortSignal
  /** Each line of output as soon as it ends (`\r` or `\n`); `stream` says where it came from. */
  onLine(line: string, stream: 'stdout' | 'stderr'): void
  /** Between SIGTERM and SIGKILL when the job is aborted. */
  graceMs?: number
}

/**
 * Splits a byte stream into lines on `\r`, `\n` or `\r\n`, decoding UTF-8 across chunk boundaries (tqdm's
 * bar is made of multi-byte block characters). `terminator` tells a `\r` redraw from a finished line.
 */
export class LineSplitter {
  private readonly decoder = new StringDecoder('utf8')
  private partial = ''
  private pendingCr = false

  constructor(private readonly emit: (line: string, terminator: '\r' | '\n') => void) {}

  push(chunk: Buffer): void {
    this.feed(this.decoder.write(chunk))
  }

  end(): void {
    this.feed(this.decoder.end())
    if (this.pendingCr) this.emit(this.partial, '\r')
    else if (this.partial) this.emit(this.partial, '\n')
    this.partial = ''
    this.pendingCr = false
  }

  private feed(text: string): void {
    for (const ch of text) {
      if (this.pendingCr) {
        this.pendingCr = false
        if (ch === '\n') {
          // `\r\n`: one finished line.
          this.emit(this.partial, '\n')
          this.partial = ''
          continue
        }
        this.emit(this.partial, '\r')
        this.partial = ''
      }
      if (ch === '\r') this.pendingCr = true
      else if (ch === '\n') {
        this.emit(this.partial, '\n')
        this.partial = ''
      } else this.partial += ch
    }
  }
}

/** The last `max` lines as a terminal would show them: a line ended by `\r` is replaced by the next one. */
export class TerminalTail {
  readonly lines: string[] = []
  private overwrite = false

  constructor(private readonly max = STDERR_TAIL_LINES) {}

  add(line: string, terminator: '\r' | '\n'): void {
    if (this.overwrite) this.lines.pop()
    // An empty redraw (tqdm's first `\r`) shows nothing; keep the line it would have replaced.
    if (line === '' && terminator === '\r') {
      this.overwrite = false
      return
    }
    this.lines.push(line)
    this.overwrite = terminator === '\r'
    if (this.lines.length > this.max) this.lines.shift()
  }
}

/** Every descendant of `pid` (children, grandchildren...), read from /proc; empty where there is no /proc. */
export async function descendantsOf(pid: number): Promise<number[]> {
  const children = new Map<number, number[]>()
  let entries: string[]
  try {
    entries = await readdir('/proc')
  } catch {
    return []
  }
  await Promise.all(
    entries
      .filter((e) => /^\d+$/.test(e))
      .map(async (e) => {
        const stat = await readFile(`/proc/${e}/stat`, 'utf8').catch(() => '')
        // `pid (comm) state ppid ...`: comm may hold spaces and parentheses, so read after the last `)`.
        const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1])
        if (!Number.isInteger(ppid)) return
        const list = children.get(ppid) ?? []
        list.push(Number(e))
        children.set(ppid, list)
      }),
  )
  const out: number[] = []
  const queue = [pid]
  while (queue.length > 0) {
    const next = queue.shift() as number
    for (const child of children.get(next) ?? []) {
      out.push(child)
      queue.push(child)
    }
  }
  return out
}

const signalAll = (pids: readonly number[], signal: NodeJS.Signals): void => {
  for (const pid of pids) {
    try {
      process.kill(pid, signal)
    } catch {
      // Already gone.
    }
  }
}

/** Still running: a zombie (exited, not yet reaped by whoever adopted it) counts as gone. */
const alive = (pid: number): boolean => {
  try {
    process.kill(pid, 0)
  } catch {
    return false
  }
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z'
  } catch {
    return !existsSync('/proc/self')
  }
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))

/**
 * Runs `command` to its end, or until `signal` aborts: then the process and all its descendants get
 * SIGTERM, SIGKILL after `graceMs`, and the call rejects with the signal's reason once they are gone.
 *
 * @example const run = await runEngineCommand({ command: python, args, cwd, env, signal, onLine })
 */
export async function runEngineCommand(cmd: EngineCommand): Promise<EngineRun> {
  cmd.signal.throwIfAborted()
  const child = spawn(cmd.command, cmd.args, {
    cwd: cmd.cwd,
    env: cmd.env,
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  const tail = new TerminalTail()
  const stdout = new LineSplitter((line) => cmd.onLine(line, 'stdout'))
  const stderr = new LineSplitter((line, terminator) => {
    tail.add(line, terminator)
    cmd.onLine(line, 'stderr')
  })
  child.stdout.on('data', (chunk: Buffer) => stdout.push(chunk))
  child.stderr.on('data', (chunk: Buffer) => stderr.push(chunk))

  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve, reject) => {
    child.once('error', reject)
    // 'close': the exit and both pipes drained, so no line is lost.
    child.once('close', (code, signal) => resolve({ code, signal }))
  })

  let stopping: Promise<void> | undefined
  const stop = () => {
    stopping ??= (async () => {
      const pid = child.pid
      if (pid === undefined) return
      // Snapshot the tree before the launcher dies: its orphans would be reparented and lost from view.
      const tree = [pid, ...(await descendantsOf(pid))]
      signalAll(tree, 'SIGTERM')
      const deadline = Date.now() + (cmd.graceMs ?? 5000)
      while (tree.some(alive) && Date.now() < deadline) {
        // Workers started meanwhile are part of the tree too.
        for (const d of await descendantsOf(pid)) if (!tree.includes(d)) tree.push(d)
        await sleep(100)
      }
      signalAll(tree.filter(alive), 'SIGKILL')
      while (tree.some(alive)) await sleep(50)
    })()
  }
  cmd.signal.addEventListener('abort', stop, { once: true })
  try {
    const result = await exited
    stdout.end()
    stderr.end()
    if (cmd.signal.aborted) {
      stop()
      await stopping
      throw cmd.signal.reason instanceof Error ? cmd.signal.reason : new Error(String(cmd.signal.reason))
    }
    return { ...result, stderrTail: tail.lines }
  } finally {
    cmd.signal.removeEventListener('abort', stop)
  }
}
