/**
 * Shared helpers of the benchmarks: a cross-process clock, percentiles, a plain-text table, child
 * processes under tsx, and the JSON result files in bench/results/.
 */
import { type ChildProcess, fork } from 'node:child_process'
import { readdirSync, readFileSync } from 'node:fs'
import { mkdir, writeFile } from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

export const BENCH_DIR = path.dirname(fileURLToPath(import.meta.url))
export const RESULTS_DIR = path.join(BENCH_DIR, 'results')

/**
 * Wall-clock milliseconds with sub-millisecond resolution, comparable across processes on one machine
 * (each process's `timeOrigin` is its start on the wall clock; `now()` is monotonic from there).
 */
export const clock = (): number => performance.timeOrigin + performance.now()

export interface Summary {
  n: number
  mean: number
  p50: number
  p95: number
  p99: number
  min: number
  max: number
}

/** Nearest-rank percentile of an ascending array. */
export function percentile(sorted: ArrayLike<number>, p: number): number {
  if (sorted.length === 0) return Number.NaN
  const rank = Math.min(sorted.length, Math.max(1, Math.ceil((p / 100) * sorted.length)))
  return sorted[rank - 1] as number
}

export function summarize(values: ArrayLike<number>): Summary {
  const sorted = Float64Array.from(values).sort()
  let sum = 0
  for (const v of sorted) sum += v
  return {
    n: sorted.length,
    mean: sorted.length ? sum / sorted.length : Number.NaN,
    p50: percentile(sorted, 50),
    p95: percentile(sorted, 95),
    p99: percentile(sorted, 99),
    min: sorted.length ? (sorted[0] as number) : Number.NaN,
    max: sorted.length ? (sorted[sorted.length - 1] as number) : Number.NaN,
  }
}

/** The median; for an even count the mean of the middle two (two rounds give their mean). */
export function median(values: readonly number[]): number {
  const s = [...values].sort((a, b) => a - b)
  return s.length === 0 ? Number.NaN : ((s[(s.length - 1) >> 1] as number) + (s[s.length >> 1] as number)) / 2
}

/** Rounds every number in a summary (for JSON that stays small and readable). */
export function rounded<T extends object>(obj: T, digits = 3): T {
  const f = 10 ** digits
  return Object.fromEntries(
    Object.entries(obj).map(([k, v]) => [k, typeof v === 'number' ? Math.round(v * f) / f : v]),
  ) as T
}

export const fmt = (n: number, digits = 2): string => (Number.isFinite(n) ? n.toFixed(digits) : String(n))

export const ratio = (a: number, b: number): number => (b > 0 ? a / b : Number.NaN)

/** Prints an aligned plain-text table (first row: headers). */
export function printTable(title: string, rows: (string | number)[][]): void {
  const cells = rows.map((r) => r.map((c) => (typeof c === 'number' ? fmt(c) : c)))
  const widths = cells[0]?.map((_, i) => Math.max(...cells.map((r) => (r[i] ?? '').length))) ?? []
  const line = (r: string[]) =>
    r.map((c, i) => (i === 0 ? c.padEnd(widths[i] ?? 0) : c.padStart(widths[i] ?? 0))).join('  ')
  console.log(`\n${title}`)
  const [head, ...body] = cells
  if (!head) return
  console.log(line(head))
  console.log(widths.map((w) => '-'.repeat(w)).join('  '))
  for (const r of body) console.log(line(r))
}

export function machineInfo(): Record<string, unknown> {
  const cpus = os.cpus()
  return {
    cpus: cpus.length,
    cpuModel: cpus[0]?.model.trim() ?? 'unknown',
    memoryGiB: Math.round((os.totalmem() / 2 ** 30) * 10) / 10,
    node: process.version,
    platform: `${os.platform()} ${os.release()}`,
  }
}

export interface BenchResult {
  name: string
  issue: string
  parameters: Record<string, unknown>
  /** What in this run is simulated or differs from production, in words. */
  notes: string[]
  results: Record<string, unknown>
}

/** Writes bench/results/<name>.json with the machine and date. Returns the path. */
export async function writeResult(result: BenchResult): Promise<string> {
  await mkdir(RESULTS_DIR, { recursive: true })
  const file = path.join(RESULTS_DIR, `${result.name}.json`)
  const body = {
    name: result.name,
    issue: result.issue,
    date: new Date().toISOString(),
    machine: machineInfo(),
    parameters: result.parameters,
    notes: result.notes,
    results: result.results,
  }
  await writeFile(file, `${JSON.stringify(body, null, 2)}\n`)
  return file
}

/**
 * How busy the whole machine is (every process, this benchmark's included): the first line of /proc/stat.
 * `machineBusyPercent(before)` gives the share of all cores busy since `before`. Null off Linux.
 */
export function cpuTimes(): { busy: number; total: number } | null {
  try {
    const fields = (readFileSync('/proc/stat', 'utf8').split('\n')[0] ?? '')
      .trim()
      .split(/\s+/)
      .slice(1)
      .map(Number)
    // user nice system idle iowait irq softirq steal ...
    const total = fields.slice(0, 8).reduce((a, b) => a + b, 0)
    const idle = (fields[3] ?? 0) + (fields[4] ?? 0)
    return { busy: total - idle, total }
  } catch {
    return null
  }
}

export function machineBusyPercent(before: ReturnType<typeof cpuTimes>): number | null {
  const now = cpuTimes()
  if (!before || !now || now.total === before.total) return null
  return Math.round(((now.busy - before.busy) / (now.total - before.total)) * 1000) / 10
}

/** The machine's load: 1-minute load average now (others' work shows here before a benchmark starts). */
export const loadAverage1m = (): number => Math.round((os.loadavg()[0] ?? 0) * 100) / 100

/**
 * The whole machine's load over a measurement: the 1-minute load average as it starts, and how busy all
 * cores have been since (`busyPercent()`, null off Linux).
 *
 * @example const machine = machineLoad(); await measure(); record(machine.loadAverage1mAtStart, machine.busyPercent())
 */
export function machineLoad(): { loadAverage1mAtStart: number; busyPercent(): number | null } {
  const before = cpuTimes()
  return { loadAverage1mAtStart: loadAverage1m(), busyPercent: () => machineBusyPercent(before) }
}

/** CPU seconds used so far, by whom: this process, its children that ended (reaped), Postgres, Redis. */
export interface CpuByProcess {
  thisProcess: number
  endedChildren: number
  postgres: number
  redis: number
}

/**
 * CPU seconds from /proc (Linux; zeros elsewhere): this process's own, its ended children's (a job
 * process counts here once the host has reaped it), and every `postgres` and `redis-server` process's.
 * Deltas around a measurement say where a job's CPU goes.
 */
export function cpuByProcess(): CpuByProcess {
  const hz = 100 // USER_HZ: clock ticks per second in /proc/<pid>/stat on Linux
  const out: CpuByProcess = { thisProcess: 0, endedChildren: 0, postgres: 0, redis: 0 }
  let pids: string[] = []
  try {
    pids = readdirSync('/proc').filter((p) => /^\d+$/.test(p))
  } catch {
    return out
  }
  for (const pid of pids) {
    let raw: string
    try {
      raw = readFileSync(`/proc/${pid}/stat`, 'utf8')
    } catch {
      continue // gone meanwhile
    }
    const comm = raw.slice(raw.indexOf('(') + 1, raw.lastIndexOf(')'))
    // Fields after the command: state is [0], utime [11], stime [12], cutime [13], cstime [14].
    const f = raw.slice(raw.lastIndexOf(')') + 2).split(' ')
    const own = (Number(f[11]) + Number(f[12])) / hz
    if (Number(pid) === process.pid) {
      out.thisProcess = own
      out.endedChildren = (Number(f[13]) + Number(f[14])) / hz
    } else if (comm === 'postgres') out.postgres += own
    else if (comm === 'redis-server') out.redis += own
  }
  return out
}

/** `after - before`, per job, in ms. */
export function cpuMsPerJob(before: CpuByProcess, after: CpuByProcess, jobs: number): CpuByProcess {
  const per = (k: keyof CpuByProcess) => Math.round(((after[k] - before[k]) * 1000 * 10) / jobs) / 10
  return {
    thisProcess: per('thisProcess'),
    endedChildren: per('endedChildren'),
    postgres: per('postgres'),
    redis: per('redis'),
  }
}

/** Forks a TypeScript (or JS) module of bench/ under tsx with an IPC channel; stdout/stderr inherited. */
export function forkTs(file: string, env: Record<string, string> = {}): ChildProcess {
  return fork(path.join(BENCH_DIR, file), [], {
    execArgv: ['--import', 'tsx'],
    // The AWS SDK warns once per process about Node 20; the host silences it in its job processes too.
    env: { ...process.env, AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: 'true', ...env },
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  })
}

/** Resolves with the child's first IPC message that satisfies `match`. */
export function nextMessage<T>(
  child: ChildProcess,
  match: (msg: unknown) => msg is T,
  timeoutMs = 60_000,
): Promise<T> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      cleanup()
      reject(new Error('timed out waiting for a message from a child process'))
    }, timeoutMs)
    const onMessage = (msg: unknown) => {
      if (!match(msg)) return
      cleanup()
      resolve(msg)
    }
    const onExit = (code: number | null) => {
      cleanup()
      reject(new Error(`child process exited (${code}) before answering`))
    }
    const cleanup = () => {
      clearTimeout(timer)
      child.off('message', onMessage)
      child.off('exit', onExit)
    }
    child.on('message', onMessage)
    child.on('exit', onExit)
  })
}

let nextAskId = 1

/**
 * Sends a request `{op, id, ...}` to a child and waits for its reply: the message with the same op and
 * id (children echo the id).
 */
export async function ask<T>(child: ChildProcess, op: string, extra: object = {}): Promise<T> {
  const id = nextAskId++
  const reply = nextMessage(
    child,
    (m): m is T & { op: string } =>
      typeof m === 'object' &&
      m !== null &&
      (m as { op?: string }).op === op &&
      (m as { id?: number }).id === id,
  )
  child.send({ op, id, ...extra })
  return reply
}

/** Ends a child: asks it to exit, then SIGKILL if it has not within `graceMs`. */
export async function stopChild(child: ChildProcess, graceMs = 5000): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return
  const exited = new Promise<void>((r) => child.once('exit', () => r()))
  if (child.connected) child.send({ op: 'exit' })
  const timer = setTimeout(() => child.kill('SIGKILL'), graceMs)
  await exited
  clearTimeout(timer)
}

/** CPU and memory of the current process, for the `stats` reply of a child. */
export function processStats(): {
  cpuUserMs: number
  cpuSystemMs: number
  rssBytes: number
  maxRssBytes: number
  heapUsedBytes: number
} {
  const cpu = process.cpuUsage()
  const mem = process.memoryUsage()
  return {
    cpuUserMs: cpu.user / 1000,
    cpuSystemMs: cpu.system / 1000,
    rssBytes: mem.rss,
    // resourceUsage().maxRSS is in KiB.
    maxRssBytes: process.resourceUsage().maxRSS * 1024,
    heapUsedBytes: mem.heapUsed,
  }
}
