/**
 * startup (walking skeleton): time from `POST /api/train` to the job's handler starting in its fresh
 * child process, against raw BullMQ pick-up and a bare `fork()` measured in the same run.
 */

import { fork } from 'node:child_process'
import { randomUUID } from 'node:crypto'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { Queue, Worker } from 'bullmq'
import { like } from 'drizzle-orm'
import type { Histogram } from 'prom-client'
import { createRedis } from '../schema/clients.ts'
import { jobs } from '../schema/db/tables.ts'
import type { ProgressEvent } from '../schema/events.ts'
import { eventLogKey, seqKey } from '../schema/keys.ts'
import { startStack, TEST_REDIS_URL } from '../tests/helpers/stack.ts'
import {
  BENCH_DIR,
  type BenchResult,
  clock,
  machineLoad,
  printTable,
  ratio,
  rounded,
  type Summary,
  summarize,
} from './lib.ts'

/**
 * 100 by default: each job needs a fresh process (0.5-0.9 s here), so the issue's 200 jobs take 2.6 to
 * 3.7 minutes on 2 cores; BENCH_STARTUP_JOBS=200 runs them (results in startup-200jobs.json).
 */
const DEFAULT_JOBS = 100
const JOBS = Number(process.env.BENCH_STARTUP_JOBS ?? DEFAULT_JOBS)
const WARMUP = 5
/**
 * Idle time before each job (BENCH_STARTUP_GAP_MS, default 1000): jobs that arrive while their slot is idle,
 * as most do, find the slot's warm spare process ready. 0 measures back-to-back jobs, where the spare forked
 * when the previous job ended is still starting.
 */
const GAP_MS = Number(process.env.BENCH_STARTUP_GAP_MS ?? 1000)
/** The tsx fork (extra baseline c) runs on every n-th round only, to keep the benchmark short. */
const FORK_TSX_EVERY = 5
const FIXTURE = path.resolve(BENCH_DIR, '../tests/fixtures/handlers/bench-noop.ts')

interface Trial {
  /** One measurement; `warm` is false for the discarded warm-up runs. */
  once(warm: boolean): Promise<void>
  close(): Promise<void>
}

/** Ours: POST /api/train -> handler start, one job at a time, on a full in-process stack. */
async function oursTrial(): Promise<
  Trial & {
    submitToHandler: number[]
    submitToResponse: number[]
    submitToRunningEvent: number[]
    runningEventToHandler: number[]
    subprocessStart(): Promise<{ count: number; meanMs: number; bucketsLe: Record<string, number> }>
  }
> {
  const stack = await startStack({
    env: { SIMULATE_STEP_MS: '0', GPU_SLOTS: '1' },
    handlerModules: { train_lora: FIXTURE },
  })
  const run = randomUUID().slice(0, 8)
  const sub = createRedis(TEST_REDIS_URL)
  await sub.connect()
  const waiters = new Map<string, { events: ProgressEvent[]; done: () => void }>()
  sub.on('pmessage', (_p: string, _c: string, raw: string) => {
    const event = JSON.parse(raw) as ProgressEvent
    const w = waiters.get(event.jobId)
    if (!w) return
    w.events.push(event)
    if (['completed', 'failed', 'cancelled'].includes(event.status)) w.done()
  })
  await sub.psubscribe(`progress:bench-startup-${run}-*`)
  let i = 0
  const out = {
    submitToHandler: [] as number[],
    submitToResponse: [] as number[],
    submitToRunningEvent: [] as number[],
    runningEventToHandler: [] as number[],
  }
  return {
    ...out,
    async once(warm) {
      const jobId = `bench-startup-${run}-${i++}`
      const events: ProgressEvent[] = []
      const finished = new Promise<void>((resolve) => waiters.set(jobId, { events, done: resolve }))
      const t0 = clock()
      const res = await fetch(stack.url('/api/train'), {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ jobId, type: 'train_lora', params: { baseModel: 'sd15', datasetPath: 'ds' } }),
      })
      const tResponse = clock()
      if (res.status !== 202) throw new Error(`submit answered ${res.status}: ${await res.text()}`)
      await res.arrayBuffer()
      await finished
      waiters.delete(jobId)
      const status = (await (await fetch(stack.url(`/api/status/${jobId}`))).json()) as {
        status: string
        result: { startedAt: number } | null
        error: unknown
      }
      if (status.status !== 'completed' || !status.result)
        throw new Error(`job ${jobId} ended ${status.status}: ${JSON.stringify(status.error)}`)
      if (!warm) return
      const handlerAt = status.result.startedAt
      // The running event's timestamp is an ISO string: millisecond resolution only.
      const running = events.find((e) => e.status === 'running')
      const runningAt = running ? Date.parse(running.timestamp) : Number.NaN
      out.submitToHandler.push(handlerAt - t0)
      out.submitToResponse.push(tResponse - t0)
      out.submitToRunningEvent.push(runningAt - t0)
      out.runningEventToHandler.push(handlerAt - runningAt)
    },
    async subprocessStart() {
      const hist = stack.host.metrics.registry.getSingleMetric('gpu_worker_subprocess_start_seconds') as
        | Histogram
        | undefined
      const values = (await hist?.get())?.values ?? []
      const count = values.find((v) => v.metricName?.endsWith('_count'))?.value ?? 0
      const sum = values.find((v) => v.metricName?.endsWith('_sum'))?.value ?? 0
      const bucketsLe: Record<string, number> = {}
      for (const v of values) if (v.metricName?.endsWith('_bucket')) bucketsLe[String(v.labels.le)] = v.value
      return { count, meanMs: count ? (sum / count) * 1000 : Number.NaN, bucketsLe }
    },
    async close() {
      sub.disconnect()
      const ids = Array.from({ length: i }, (_, k) => `bench-startup-${run}-${k}`)
      for (let k = 0; k < ids.length; k += 200)
        await stack.redis
          .del(...ids.slice(k, k + 200).flatMap((id) => [seqKey(id), eventLogKey(id)]))
          .catch(() => 0)
      await stack.database.db
        .delete(jobs)
        .where(like(jobs.id, `bench-startup-${run}-%`))
        .catch(() => {})
      await stack.close()
    },
  }
}

/** Baseline (a): raw BullMQ, `queue.add` -> the in-process Worker's processor called, one at a time. */
async function bullmqTrial(): Promise<Trial & { latencies: number[] }> {
  const prefix = `bench-${randomUUID().slice(0, 8)}`
  const queue = new Queue('bench-startup', { connection: createRedis(TEST_REDIS_URL), prefix })
  let picked: (t: number) => void = () => {}
  const worker = new Worker(
    'bench-startup',
    async () => {
      picked(clock())
    },
    { connection: createRedis(TEST_REDIS_URL), prefix, concurrency: 1 },
  )
  await worker.waitUntilReady()
  await queue.waitUntilReady()
  const latencies: number[] = []
  let i = 0
  return {
    latencies,
    async once(warm) {
      const processed = new Promise<number>((r) => (picked = r))
      const completed = new Promise<void>((r) => worker.once('completed', () => r()))
      const t0 = clock()
      await queue.add('noop', { i }, { jobId: `j${i++}`, removeOnComplete: true })
      const t1 = await processed
      await completed
      if (warm) latencies.push(t1 - t0)
    },
    async close() {
      await worker.close()
      await queue.obliterate({ force: true }).catch(() => {})
      await queue.close()
    },
  }
}

/**
 * Baselines (b) and (c): `fork()` of a tiny .mjs that sends one IPC message, to its arrival in the
 * parent; plain node, and under tsx as the host's job processes run in development. Same fork options as
 * gpu-host/runner.ts (detached, piped stdio, IPC).
 */
async function forkTrial(execArgv: string[]): Promise<Trial & { latencies: number[] }> {
  const dir = await mkdtemp(path.join(tmpdir(), 'bench-fork-'))
  const file = path.join(dir, 'child.mjs')
  await writeFile(file, 'process.send({ ready: true })\nprocess.on("disconnect", () => process.exit(0))\n')
  const latencies: number[] = []
  return {
    latencies,
    async once(warm) {
      const t0 = clock()
      const child = fork(file, [], { detached: true, execArgv, stdio: ['ignore', 'pipe', 'pipe', 'ipc'] })
      const exited = new Promise<void>((r) => child.once('exit', () => r()))
      const t1 = await new Promise<number>((resolve, reject) => {
        child.once('message', () => resolve(clock()))
        child.once('error', reject)
      })
      child.disconnect()
      await exited
      if (warm) latencies.push(t1 - t0)
    },
    close: () => rm(dir, { recursive: true, force: true }),
  }
}

export async function startup(): Promise<BenchResult> {
  const forkTsxRuns = Math.ceil(JOBS / FORK_TSX_EVERY)
  console.log(
    `startup: ${JOBS} jobs through the stack one at a time (GPU_SLOTS=1), interleaved round-robin with the baselines`,
  )
  const ours = await oursTrial()
  const bullmqT = await bullmqTrial()
  const forkT = await forkTrial([])
  const forkTsxT = await forkTrial(['--import', 'tsx'])
  const t = clock()
  const machine = machineLoad()
  let measured = 0
  try {
    // Round-robin, so that whatever else the machine does falls on every method alike.
    for (let i = 0; i < WARMUP + JOBS; i++) {
      const warm = i >= WARMUP
      if (GAP_MS > 0) await sleep(GAP_MS)
      await ours.once(warm)
      await bullmqT.once(warm)
      await forkT.once(warm)
      if (!warm || i % FORK_TSX_EVERY === 0) await forkTsxT.once(warm)
      if (warm) measured += 1
      if (measured > 0 && measured % 50 === 0) console.log(`  ${measured}/${JOBS}`)
    }
  } finally {
    await Promise.all([bullmqT.close(), forkT.close(), forkTsxT.close()])
  }
  const subprocessStart = await ours.subprocessStart()
  await ours.close()
  const loopSec = (clock() - t) / 1000
  const busy = machine.busyPercent()
  const bullmq = bullmqT.latencies
  const fork = forkT.latencies
  const forkTsx = forkTsxT.latencies

  const s = {
    ours: summarize(ours.submitToHandler),
    bullmq: summarize(bullmq),
    fork: summarize(fork),
    forkTsx: summarize(forkTsx),
    submitToResponse: summarize(ours.submitToResponse),
    submitToRunningEvent: summarize(ours.submitToRunningEvent),
    runningEventToHandler: summarize(ours.runningEventToHandler),
  }
  const row = (name: string, x: Summary) => [name, x.n, x.p50, x.p95, x.mean, x.max]
  printTable('startup: submit -> handler start (ms)', [
    ['measure', 'n', 'p50', 'p95', 'mean', 'max'],
    row('ours: POST /api/train -> handler run()', s.ours),
    row('  phase: POST -> 202 received', s.submitToResponse),
    row('  phase: POST -> "running" event (1 ms res.)', s.submitToRunningEvent),
    row('  phase: "running" event -> handler run()', s.runningEventToHandler),
    row('baseline a: BullMQ add -> processor', s.bullmq),
    row('baseline b: fork(.mjs) -> first IPC msg', s.fork),
    row('extra c: fork(.mjs, --import tsx) -> IPC', s.forkTsx),
  ])
  const ratios = {
    oursOverBullmq: { p50: ratio(s.ours.p50, s.bullmq.p50), p95: ratio(s.ours.p95, s.bullmq.p95) },
    oursOverFork: { p50: ratio(s.ours.p50, s.fork.p50), p95: ratio(s.ours.p95, s.fork.p95) },
    oursOverForkTsx: { p50: ratio(s.ours.p50, s.forkTsx.p50), p95: ratio(s.ours.p95, s.forkTsx.p95) },
  }
  printTable('startup: ratios', [
    ['ratio', 'p50', 'p95'],
    ['ours / BullMQ', ratios.oursOverBullmq.p50, ratios.oursOverBullmq.p95],
    ['ours / fork', ratios.oursOverFork.p50, ratios.oursOverFork.p95],
    ['ours / fork under tsx', ratios.oursOverForkTsx.p50, ratios.oursOverForkTsx.p95],
  ])
  const sp = subprocessStart
  console.log(
    `\ngpu_worker_subprocess_start_seconds (host's own view, fork -> 'started'): count ${sp.count}, mean ${sp.meanMs.toFixed(1)} ms; cumulative buckets ${JSON.stringify(sp.bucketsLe)}`,
  )
  console.log(
    `(${WARMUP} + ${JOBS} rounds took ${loopSec.toFixed(1)} s; load average at start ${machine.loadAverage1mAtStart}, machine CPU busy ${busy}% meanwhile)`,
  )

  const r = (x: Summary) => rounded(x, 2)
  return {
    name: `startup${JOBS === DEFAULT_JOBS ? '' : `-${JOBS}jobs`}${GAP_MS === 1000 ? '' : `-gap${GAP_MS}ms`}`,
    issue: 'walking skeleton: submit -> handler start latency',
    parameters: {
      jobs: JOBS,
      warmupJobsDiscarded: WARMUP,
      forkTsxRuns,
      mode: 'sequential: each job is submitted only after the previous one has completed; the four methods run round-robin (ours, a, b, c every 5th round)',
      gapBeforeEachJobMs: GAP_MS,
      gpuSlots: 1,
      simulateStepMs: 0,
      handler: 'tests/fixtures/handlers/bench-noop.ts (returns its start time at once)',
    },
    notes: [
      'Ours: startStack() from tests/helpers/stack.ts: gateway and GPU host in this process, real Redis and Postgres (gpu_jobs_test), in-process s3rver; the child process runs under tsx as in development (production runs compiled JS).',
      'Latency = handler start (performance.timeOrigin + performance.now() in the child) minus the moment before fetch() of POST /api/train (same clock in this process).',
      'Phases: the "running" event timestamp is an ISO string (1 ms resolution) written by the host just before it forks.',
      'Baseline a: BullMQ Queue.add -> in-process Worker processor called, on the same Redis, one job at a time.',
      'Baseline b: child_process.fork() of a 2-line .mjs (detached, piped stdio, IPC: same options as gpu-host/runner.ts) -> its first IPC message received by the parent. Extra c: the same under --import tsx, which the host uses for its .ts child entry.',
    ],
    results: {
      ms: {
        ours: r(s.ours),
        oursPhases: {
          submitToResponse: r(s.submitToResponse),
          submitToRunningEvent: r(s.submitToRunningEvent),
          runningEventToHandler: r(s.runningEventToHandler),
        },
        bullmq: r(s.bullmq),
        fork: r(s.fork),
        forkTsx: r(s.forkTsx),
      },
      ratios: {
        oursOverBullmq: rounded(ratios.oursOverBullmq, 2),
        oursOverFork: rounded(ratios.oursOverFork, 2),
        oursOverForkTsx: rounded(ratios.oursOverForkTsx, 2),
      },
      subprocessStartMetric: {
        count: sp.count,
        meanMs: Math.round(sp.meanMs * 100) / 100,
        cumulativeBucketsLeSeconds: sp.bucketsLe,
      },
      roundsWallSeconds: Math.round(loopSec * 10) / 10,
      machineLoad: {
        loadAverage1mAtStart: machine.loadAverage1mAtStart,
        machineCpuBusyPercentDuringRounds: busy,
      },
    },
  }
}
