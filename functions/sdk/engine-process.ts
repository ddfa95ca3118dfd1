/**
 * Runs a real engine (kohya's trainer, F5-TTS, ...) as a subprocess of the job process: its output as
 * lines, a bounded tail of its stderr, and a stop on abort that takes the engine's whole process tree down.
 */
import { spawn } from 'node:child_process'
import { readdir, readFile } from 'node:fs/promises'
import { StringDecoder } from 'node:string_decoder'
import { setTimeout as sleep } from 'node:timers/promises'

export type EngineStream = 'stdout' | 'stderr'

export interface EngineProcessOptions {
  /** The executable (a name looked up in PATH, or a path). */
  command: string
  args: readonly string[]
  cwd?: string
  /**
   * Variables set on top of this process's environment (a job process's is already allow-listed);
   * `undefined` removes one.
   */
  env?: Record<string, string | undefined>
  /** Aborting it stops the engine: SIGTERM to its process tree, `killGraceMs`, then SIGKILL. */
  signal?: AbortSignal
  /**
   * Called for every line of either stream, split on `\r` as well as `\n` (tqdm redraws its bar with `\r`),
   * without the terminator; empty lines are skipped. A throw stops the engine and rejects the run with it.
   */
  onLine?: (stream: EngineStream, line: string) => void
  /**
   * Called when a read ends in the middle of a line, with the text of that line so far (it comes again,
   * complete, through `onLine` once it ends). tqdm writes `\r<bar>` and ends a redraw only with the next
   * one's `\r`, so this is where the current state of a bar shows up when it is drawn, not one redraw
   * late. The same text may come more than once; a throw is treated as in `onLine`.
   */
  onPartial?: (stream: EngineStream, text: string) => void
  /** How many stderr lines to keep for the error message (default 100). */
  tailLines?: number
  /** Time between SIGTERM and SIGKILL on abort (default 5000 ms). */
  killGraceMs?: number
  /**
   * Where the engine's lines are echoed, so they reach the job's logs: the host keeps a job process's
   * stdout and stderr as the attempt's log, and an engine's pipes end here, not there. Default: this
   * process's own streams; `false` echoes nothing. A progress bar's `\r` redraws are thinned to one every
   * `REDRAW_ECHO_MS` (and the last one), so a tqdm bar does not fill the attempt's capped log.
   */
  echo?: EngineEcho | false
}

/** The streams an engine's lines are echoed to (`EngineProcessOptions.echo`). */
export interface EngineEcho {
  stdout: Pick<NodeJS.WritableStream, 'write'>
  stderr: Pick<NodeJS.WritableStream, 'write'>
}

/** At most one `\r` redraw of a progress bar per this many ms is echoed (the bar's last state always is). */
export const REDRAW_ECHO_MS = 10_000

export interface EngineProcessResult {
  /** The exit code, or null when a signal ended it. */
  exitCode: number | null
  signal: NodeJS.Signals | null
  /**
   * The last `tailLines` lines of stderr as a terminal would have shown them: a line a `\r` redraw
   * replaced is not kept, so a progress bar takes one line, not one per redraw.
   */
  tail: string[]
  /** True when `signal` aborted the run (the engine was stopped, whatever its exit code). */
  aborted: boolean
  /** True when the engine had to be SIGKILLed after the grace period. */
  killed: boolean
}

/** One line longer than this (an engine printing without newlines) is cut, so memory stays bounded. */
const MAX_LINE_CHARS = 64 * 1024
/** After the engine exits, how long its pipes may stay open (a grandchild holding them) before we stop reading. */
const PIPE_DRAIN_MS = 2000

/**
 * Runs `command args` and resolves when it has exited and its output has been read. The engine is spawned
 * WITHOUT `detached`, so it stays in the job's process group and dies with it when the host kills the
 * group; on `signal` abort it is stopped here too (its descendants included, found through /proc, since
 * launchers such as `accelerate launch` do not pass SIGTERM on to the trainer they start) and the run
 * resolves with `aborted: true` once they are gone. A command that cannot be started (ENOENT, EACCES)
 * rejects with the spawn error.
 *
 * @example
 * const run = await runEngineProcess({
 *   command: 'python3', args: ['-m', 'accelerate.commands.launch', 'train_network.py'],
 *   cwd: kohyaDir, env: { PYTHONUNBUFFERED: '1' }, signal: ctx.signal,
 *   onLine: (stream, line) => parser.push(stream, line),
 * })
 * if (run.aborted) throwIfAborted(ctx.signal)
 * if (run.exitCode !== 0) throw new RetryableError(`exit ${run.exitCode}:\n${run.tail.join('\n')}`)
 */
export async function runEngineProcess(opts: EngineProcessOptions): Promise<EngineProcessResult> {
  const tailLines = opts.tailLines ?? 100
  const graceMs = opts.killGraceMs ?? 5000
  if (opts.signal?.aborted) return { exitCode: null, signal: null, tail: [], aborted: true, killed: false }

  const env: NodeJS.ProcessEnv = { ...process.env }
  for (const [k, value] of Object.entries(opts.env ?? {})) {
    if (value === undefined) delete env[k]
    else env[k] = value
  }
  const child = spawn(opts.command, [...opts.args], {
    cwd: opts.cwd,
    env,
    stdio: ['ignore', 'pipe', 'pipe'],
  })

  const tail = new LineTail(tailLines)
  let failure: { error: unknown } | undefined
  let stopping: Promise<boolean> | undefined
  const stop = (): Promise<boolean> => {
    stopping ??= child.pid === undefined ? Promise.resolve(false) : stopTree(child.pid, graceMs)
    return stopping
  }
  const guarded = (fn: () => void): void => {
    if (failure) return
    try {
      fn()
    } catch (error) {
      failure = { error }
      void stop()
    }
  }
  const emit = (stream: EngineStream, line: string): void => guarded(() => opts.onLine?.(stream, line))
  const partial = (stream: EngineStream) => (text: string) => guarded(() => opts.onPartial?.(stream, text))
  const echo =
    opts.echo === false ? undefined : (opts.echo ?? { stdout: process.stdout, stderr: process.stderr })
  const echoes = echo && { stdout: new LineEcho(echo.stdout), stderr: new LineEcho(echo.stderr) }
  const splitters = {
    stdout: new LineSplitter((line, byCr) => {
      echoes?.stdout.line(line, byCr)
      emit('stdout', line)
    }, partial('stdout')),
    stderr: new LineSplitter((line, byCr) => {
      tail.push(line, byCr)
      echoes?.stderr.line(line, byCr)
      emit('stderr', line)
    }, partial('stderr')),
  }

  const spawned = new Promise<void>((resolve, reject) => {
    child.once('spawn', resolve)
    child.once('error', reject)
  })
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.once('exit', (code, signal) => resolve({ code, signal })),
  )
  const streamEnded = (stream: NodeJS.ReadableStream, name: EngineStream) =>
    new Promise<void>((resolve) => {
      stream.on('data', (chunk: Buffer) => splitters[name].write(chunk))
      stream.once('end', resolve)
      stream.once('close', resolve)
      stream.once('error', () => resolve())
    })
  const drained = Promise.all([streamEnded(child.stdout, 'stdout'), streamEnded(child.stderr, 'stderr')])

  await spawned // rejects with ENOENT/EACCES; nothing was started then
  child.on('error', () => {}) // a later error (a kill that failed) must not be an uncaught 'error' event

  const onAbort = (): void => {
    void stop()
  }
  opts.signal?.addEventListener('abort', onAbort, { once: true })
  // Aborted while the process was starting: the event has fired already.
  if (opts.signal?.aborted) onAbort()
  try {
    const exit = await exited
    // The engine is gone; a descendant that still holds a pipe must not keep the job waiting for EOF.
    const timer = setTimeout(() => {
      child.stdout.destroy()
      child.stderr.destroy()
    }, PIPE_DRAIN_MS)
    await drained
    clearTimeout(timer)
    splitters.stdout.end()
    splitters.stderr.end()
    echoes?.stdout.end()
    echoes?.stderr.end()
    // On abort, wait for the whole tree, not just the launcher, before telling the handler it stopped.
    const killed = stopping === undefined ? false : await stopping
    if (failure) throw failure.error
    return {
      exitCode: exit.code,
      signal: exit.signal,
      tail: tail.lines(),
      aborted: opts.signal?.aborted === true,
      killed,
    }
  } finally {
    opts.signal?.removeEventListener('abort', onAbort)
  }
}

/**
 * Splits a byte stream into lines on `\n`, `\r\n` and a lone `\r`, decoding UTF-8 across chunk boundaries.
 * `onLine(line, byCr)`: `byCr` is true when a lone `\r` ended the line (a redraw will overwrite it).
 * `onPartial(text)`: after each write that ends inside a line, that line so far.
 */
export class LineSplitter {
  private readonly decoder = new StringDecoder('utf8')
  private partial = ''
  private pendingCr = false
  constructor(
    private readonly onLine: (line: string, byCr: boolean) => void,
    private readonly onPartial?: (text: string) => void,
  ) {}

  write(chunk: Buffer | string): void {
    this.feed(typeof chunk === 'string' ? chunk : this.decoder.write(chunk))
    if (this.partial.length > 0) this.onPartial?.(this.partial)
  }

  /** Flushes the last, unterminated line. */
  end(): void {
    this.feed(this.decoder.end())
    if (this.pendingCr) {
      this.pendingCr = false
      this.flush(true)
    }
    this.flush(false)
  }

  private feed(text: string): void {
    let start = 0
    for (let i = 0; i < text.length; i++) {
      const c = text.charCodeAt(i)
      if (this.pendingCr) {
        // A `\r` is only known to be a lone redraw once the next character is not `\n`.
        this.pendingCr = false
        if (c === 10) {
          start = i + 1
          this.flush(false)
          continue
        }
        this.flush(true)
      }
      if (c === 10 || c === 13) {
        this.partial += text.slice(start, i)
        start = i + 1
        if (c === 13) this.pendingCr = true
        else this.flush(false)
      }
    }
    this.partial += text.slice(start)
    if (this.partial.length > MAX_LINE_CHARS) this.flush(false)
  }

  private flush(byCr: boolean): void {
    const line = this.partial
    this.partial = ''
    if (line.length > 0) this.onLine(line, byCr)
  }
}

/**
 * Echoes an engine's lines to a stream: every line a `\n` ended, and of a run of `\r` redraws the first,
 * one every REDRAW_ECHO_MS and the last (held back until the next line or the end shows it was the last).
 */
class LineEcho {
  private held: string | undefined
  private lastRedrawAt = Number.NEGATIVE_INFINITY
  constructor(private readonly out: Pick<NodeJS.WritableStream, 'write'>) {}

  line(text: string, byCr: boolean): void {
    if (!byCr) {
      // A bar that ends with `\n` ends on its final state: the held redraw is an older one.
      this.held = undefined
      this.lastRedrawAt = Number.NEGATIVE_INFINITY
      this.out.write(`${text}\n`)
      return
    }
    const now = Date.now()
    if (now - this.lastRedrawAt >= REDRAW_ECHO_MS) {
      this.lastRedrawAt = now
      this.held = undefined
      this.out.write(`${text}\n`)
    } else this.held = text
  }

  end(): void {
    if (this.held !== undefined) this.out.write(`${this.held}\n`)
    this.held = undefined
  }
}

/** The last `max` lines, where a line ended by a lone `\r` is replaced by the next one (as on a terminal). */
class LineTail {
  private readonly buf: string[] = []
  private lastByCr = false
  constructor(private readonly max: number) {}

  push(line: string, byCr: boolean): void {
    if (this.lastByCr) this.buf.pop()
    this.buf.push(line)
    this.lastByCr = byCr
    if (this.buf.length > this.max) this.buf.shift()
  }

  lines(): string[] {
    return [...this.buf]
  }
}

interface ProcInfo {
  ppid: number
  /** Start time in clock ticks since boot: tells a live pid from a reused one. */
  start: string
  /** Exited, not yet reaped: nothing to stop, but its children still name it as their parent. */
  zombie: boolean
}

/** Every process on the machine, from /proc; an empty map where there is no /proc. */
async function processTable(): Promise<Map<number, ProcInfo>> {
  const table = new Map<number, ProcInfo>()
  const names = await readdir('/proc').catch(() => [] as string[])
  await Promise.all(
    names.map(async (name) => {
      if (!/^\d+$/.test(name)) return
      const stat = await readFile(`/proc/${name}/stat`, 'utf8').catch(() => '')
      if (!stat) return
      // Fields after the command name, which may itself contain spaces and parentheses.
      const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
      table.set(Number(name), {
        ppid: Number(rest[1]),
        start: rest[19] ?? '',
        zombie: rest[0] === 'Z' || rest[0] === 'X',
      })
    }),
  )
  return table
}

/**
 * Stops `pid` and all its descendants: SIGTERM to each, up to `graceMs` for them to go, then SIGKILL to
 * whatever is left, and waits until /proc shows none of them. Processes seen once are remembered (with their
 * start time, so a reused pid is never signalled): a child whose parent died is reparented and could no
 * longer be found from `pid`. Resolves true when SIGKILL was needed.
 */
async function stopTree(pid: number, graceMs: number): Promise<boolean> {
  const known = new Map<number, string>()
  const collect = async (): Promise<number[]> => {
    const table = await processTable()
    if (table.size === 0) return [] // no /proc: only the direct child can be signalled, below
    const root = table.get(pid)
    if (root && !known.has(pid)) known.set(pid, root.start)
    for (let grew = true; grew; ) {
      grew = false
      for (const [p, info] of table) {
        if (!known.has(p) && known.has(info.ppid) && known.get(info.ppid) === table.get(info.ppid)?.start) {
          known.set(p, info.start)
          grew = true
        }
      }
    }
    return [...known]
      .filter(([p, start]) => {
        const info = table.get(p)
        return info !== undefined && info.start === start && !info.zombie
      })
      .map(([p]) => p)
  }
  const signalAll = (pids: number[], sig: NodeJS.Signals): void => {
    for (const p of pids.length > 0 ? pids : [pid]) {
      try {
        process.kill(p, sig)
      } catch {
        // already gone
      }
    }
  }

  signalAll(await collect(), 'SIGTERM')
  const deadline = Date.now() + graceMs
  while (Date.now() < deadline) {
    await sleep(50)
    if ((await collect()).length === 0) return false
  }
  for (let i = 0; i < 100; i++) {
    const alive = await collect()
    if (alive.length === 0) break
    signalAll(alive, 'SIGKILL')
    await sleep(50)
  }
  return true
}
