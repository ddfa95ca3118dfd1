/**
 * packing: jobs per GPU and the time to admit the next job, on a stand-in H200 (the stand-in
 * `nvidia-smi` of tests/fixtures/nvidia-smi first on PATH) driving real GPU hosts with real job
 * processes, against one job per GPU (MAX_JOBS_PER_GPU=1) and against dispatch to a free slot, both
 * measured in the same run; and a GPU another process fills, where nothing may start without room.
 */
import { randomUUID } from 'node:crypto'
import { writeFile } from 'node:fs/promises'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import type { ProgressEvent } from '../schema/events.ts'
import { type Stack, startHost, startStack, TERMINAL } from '../tests/helpers/stack.ts'
import { removeJobs, subscribeEvents } from './jobs.ts'
import {
  BENCH_DIR,
  type BenchResult,
  clock,
  machineLoad,
  median,
  printTable,
  ratio,
  rounded,
  type Summary,
  summarize,
} from './lib.ts'

const STAND_IN = path.resolve(BENCH_DIR, '../tests/fixtures/nvidia-smi')
const FIXTURE = path.resolve(BENCH_DIR, '../tests/fixtures/handlers/bench-holds.ts')
/** An H200 as nvidia-smi reports it (141 GB: 143771 MiB). */
const H200 = {
  index: 0,
  uuid: 'GPU-0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0',
  name: 'NVIDIA H200',
  memoryTotalMb: 143_771,
}
/** A voice-training job's VRAM (train_voice, F5-TTS: about 8 GB). */
const VOICE_MB = 8_000
/** What the other process (a ComfyUI, an Ollama) holds in the filled scenario: room for two such jobs. */
const OTHER_MB = 120_000

/** One host configuration and the jobs it is given at once. */
interface Trial {
  name: string
  maxJobsPerGpu: number
  vramMb: number
  jobs: number
  /** Memory another process holds on the GPU. */
  otherMb?: number
}

interface Sizes {
  holdMs: number
  rounds: number
  /** Jobs one at a time on an idle GPU (the free-slot dispatch), the first `warmup` discarded. */
  freeJobs: number
  warmup: number
  trials: { baseline: Trial; packed: Trial; byVram: Trial; filled: Trial }
}

const sizes = (quick: boolean): Sizes => {
  const jobs = quick ? 6 : 24
  return {
    holdMs: quick ? 200 : 1_000,
    rounds: quick ? 1 : 2,
    freeJobs: quick ? 3 : 8,
    warmup: quick ? 1 : 2,
    trials: {
      baseline: { name: 'one job per GPU (MAX_JOBS_PER_GPU=1)', maxJobsPerGpu: 1, vramMb: VOICE_MB, jobs },
      packed: { name: 'packed (MAX_JOBS_PER_GPU=4, default)', maxJobsPerGpu: 4, vramMb: VOICE_MB, jobs },
      // The cap above what fits: VRAM is the limit (17 voice jobs on an H200; quick: 3 of 40 GB).
      byVram: {
        name: 'packed by VRAM (MAX_JOBS_PER_GPU=32)',
        maxJobsPerGpu: 32,
        vramMb: quick ? 40_000 : VOICE_MB,
        jobs: quick ? 6 : 34,
      },
      filled: {
        name: `another process holds ${OTHER_MB} MiB (MAX_JOBS_PER_GPU=4)`,
        maxJobsPerGpu: 4,
        vramMb: VOICE_MB,
        jobs: quick ? 4 : 8,
        otherMb: OTHER_MB,
      },
    },
  }
}

/** Each job's first `running` event and its terminal event, as they arrived (clock()). */
interface Seen {
  runningAt?: number
  endedAt?: number
  status?: string
}

/** The run's events by job, and a wait that is checked again at every event. */
async function recordEvents(idPrefix: string) {
  const seen = new Map<string, Seen>()
  const checks = new Set<() => void>()
  const sub = await subscribeEvents(idPrefix, (event: ProgressEvent, at: number) => {
    const s = seen.get(event.jobId) ?? {}
    if (event.status === 'running' && s.runningAt === undefined) s.runningAt = at
    if (TERMINAL.includes(event.status) && s.endedAt === undefined) {
      s.endedAt = at
      s.status = event.status
    }
    seen.set(event.jobId, s)
    for (const check of checks) check()
  })
  const until = (ok: () => boolean, timeoutMs: number, what: string) =>
    new Promise<void>((resolve, reject) => {
      const check = () => {
        if (!ok()) return
        cleanup()
        resolve()
      }
      const timer = setTimeout(() => {
        cleanup()
        reject(new Error(`packing: timed out waiting for ${what}`))
      }, timeoutMs)
      const cleanup = () => {
        clearTimeout(timer)
        checks.delete(check)
      }
      checks.add(check)
      check()
    })
  return { seen, until, close: sub.close }
}

/** The stand-in's GPU: one H200, and the other process's memory if any. */
const setGpu = (file: string, otherMb = 0) =>
  writeFile(
    file,
    JSON.stringify({
      gpus: [H200],
      processes: otherMb > 0 ? [{ pid: 4242, name: 'ollama', gpuUuid: H200.uuid, usedMb: otherMb }] : [],
    }),
  )

/** What the handlers said of themselves (bench-holds.ts). */
interface Held {
  startedAt: number
  endedAt: number
  cudaVisibleDevices: string | null
}

/** Most and time-weighted mean of the intervals open at once, over [first start, last end]. */
function atOnce(intervals: { startedAt: number; endedAt: number }[]): { max: number; mean: number } {
  const edges = intervals
    .flatMap((i) => [
      [i.startedAt, 1],
      [i.endedAt, -1],
    ])
    // Ends before starts at the same moment: a job that ends as the next starts is not two at once.
    .sort((a, b) => (a[0] as number) - (b[0] as number) || (a[1] as number) - (b[1] as number))
  let open = 0
  let max = 0
  let area = 0
  for (const [k, [at, d]] of edges.entries()) {
    open += d as number
    max = Math.max(max, open)
    const next = edges[k + 1]
    if (next) area += open * ((next[0] as number) - (at as number))
  }
  const span = ((edges.at(-1)?.[0] as number) ?? 0) - ((edges[0]?.[0] as number) ?? 0)
  return { max, mean: span > 0 ? area / span : Number.NaN }
}

/** One trial's numbers (a round of it). */
interface TrialRun {
  jobsPerSecond: number
  maxAtOnce: number
  meanAtOnce: number
  /** The host's own gauge, sampled every 50 ms: most jobs it had on the GPU, least free memory (MiB). */
  gaugeMaxJobs: number
  gaugeMinFreeMb: number
  /** Waiting job's `running` event - the handler end (in its process) of the job whose room it took. */
  admitAfterHandlerEndMs: number[]
  /** The same from the ended job's terminal event (what a client sees of the end). */
  admitAfterEndEventMs: number[]
  /** Idle GPU: queue.add -> the job's `running` event. */
  freeSlotDispatchMs: number[]
  failed: number
  wrongDevice: number
}

async function runTrial(
  stack: Stack,
  scenarioFile: string,
  trial: Trial,
  s: Sizes,
  ids: { prefix: string; all: string[] },
): Promise<TrialRun> {
  await setGpu(scenarioFile, trial.otherMb)
  const host = await startHost(stack, {
    env: { MAX_JOBS_PER_GPU: String(trial.maxJobsPerGpu) },
    handlerModules: { train_lora: FIXTURE },
  })
  const events = await recordEvents(ids.prefix)
  let n = ids.all.length
  const add = async (holdMs: number, count: number): Promise<string[]> => {
    const batch = Array.from({ length: count }, () => `${ids.prefix}${n++}`)
    ids.all.push(...batch)
    await stack.queue.addBulk(
      batch.map((jobId) => ({
        name: 'train_lora',
        data: {
          jobId,
          type: 'train_lora',
          params: { mode: 'bench-holds', holdMs },
          gpu: { vramMb: trial.vramMb, exclusive: false },
        },
        opts: { jobId },
      })),
    )
    return batch
  }
  const ended = (batch: string[]) => () => batch.every((id) => events.seen.get(id)?.endedAt !== undefined)
  try {
    // Free slot: one job at a time on the idle GPU; the first ones also warm the host's spares.
    const freeSlotDispatchMs: number[] = []
    for (let i = 0; i < s.freeJobs; i++) {
      const t0 = clock()
      const [id] = await add(0, 1)
      await events.until(ended([id as string]), 60_000, 'a free-slot job')
      const runningAt = events.seen.get(id as string)?.runningAt
      if (i >= s.warmup && runningAt !== undefined) freeSlotDispatchMs.push(runningAt - t0)
      // The spare it took is replaced before the next (an idle host, not one just after a job).
      await sleep(300)
    }
    // Full: every job at once, more than fit; the GPU stays full until the queue is empty.
    const gaugeJobs: number[] = []
    const gaugeFree: number[] = []
    let sampling = true
    const sampler = (async () => {
      const read = async (name: string) =>
        (await host.metrics.registry.getSingleMetric(name)?.get())?.values[0]?.value ?? Number.NaN
      while (sampling) {
        gaugeJobs.push(await read('gpu_worker_running_jobs_per_gpu'))
        gaugeFree.push((await read('gpu_worker_gpu_memory_free_bytes')) / 2 ** 20)
        await sleep(50)
      }
    })()
    const t0 = clock()
    const batch = await add(s.holdMs, trial.jobs)
    await events.until(ended(batch), 300_000, `${trial.jobs} jobs of "${trial.name}"`)
    const seconds = (Math.max(...batch.map((id) => events.seen.get(id)?.endedAt ?? 0)) - t0) / 1000
    sampling = false
    await sampler
    const held = await Promise.all(batch.map(async (id) => (await stack.job(id)).result as unknown as Held))
    const overlap = atOnce(held)
    // FIFO pairing: with all jobs waiting from the start, the k-th job to end made the room that the
    // k-th job after those started at once took.
    const runningAt = batch.map((id) => events.seen.get(id)?.runningAt ?? Number.NaN).sort((a, b) => a - b)
    const handlerEnds = held.map((h) => h.endedAt).sort((a, b) => a - b)
    const endEvents = batch.map((id) => events.seen.get(id)?.endedAt ?? Number.NaN).sort((a, b) => a - b)
    const first = runningAt.filter((t) => t < (handlerEnds[0] ?? 0)).length
    const fromHandlerEnd: number[] = []
    const fromEndEvent: number[] = []
    for (let k = 0; first + k < runningAt.length; k++) {
      fromHandlerEnd.push((runningAt[first + k] as number) - (handlerEnds[k] as number))
      fromEndEvent.push((runningAt[first + k] as number) - (endEvents[k] as number))
    }
    return {
      jobsPerSecond: trial.jobs / seconds,
      maxAtOnce: overlap.max,
      meanAtOnce: overlap.mean,
      gaugeMaxJobs: Math.max(...gaugeJobs.filter(Number.isFinite)),
      gaugeMinFreeMb: Math.min(...gaugeFree.filter(Number.isFinite)),
      admitAfterHandlerEndMs: fromHandlerEnd,
      admitAfterEndEventMs: fromEndEvent,
      freeSlotDispatchMs,
      failed: batch.filter((id) => events.seen.get(id)?.status !== 'completed').length,
      wrongDevice: held.filter((h) => h.cudaVisibleDevices !== H200.uuid).length,
    }
  } finally {
    events.close()
    await host.close()
  }
}

/** One trial over its rounds: medians of the rates, extremes of the counts, pooled latencies. */
interface TrialSummary {
  trial: string
  jobs: number
  vramMb: number
  /** What may run at once: the cap, or what the memory holds if less. */
  allowedAtOnce: number
  jobsPerSecond: number
  maxAtOnce: number
  meanAtOnce: number
  hostGaugeMaxJobs: number
  hostGaugeMinFreeMb: number
  admitAfterHandlerEndMs: Summary
  admitAfterEndEventMs: Summary
  freeSlotDispatchMs: Summary
  failedJobs: number
  jobsOnAnotherDevice: number
  perRoundJobsPerSecond: number[]
  perRoundMeanAtOnce: number[]
}

function summarizeTrial(t: Trial, rs: TrialRun[]): TrialSummary {
  const pooled = (key: 'admitAfterHandlerEndMs' | 'admitAfterEndEventMs' | 'freeSlotDispatchMs') =>
    rounded(summarize(rs.flatMap((x) => x[key])))
  return {
    trial: t.name,
    jobs: t.jobs,
    vramMb: t.vramMb,
    allowedAtOnce: Math.min(t.maxJobsPerGpu, Math.floor((H200.memoryTotalMb - (t.otherMb ?? 0)) / t.vramMb)),
    jobsPerSecond: round(median(rs.map((x) => x.jobsPerSecond))),
    maxAtOnce: Math.max(...rs.map((x) => x.maxAtOnce)),
    meanAtOnce: round(median(rs.map((x) => x.meanAtOnce))),
    hostGaugeMaxJobs: Math.max(...rs.map((x) => x.gaugeMaxJobs)),
    hostGaugeMinFreeMb: Math.min(...rs.map((x) => x.gaugeMinFreeMb)),
    admitAfterHandlerEndMs: pooled('admitAfterHandlerEndMs'),
    admitAfterEndEventMs: pooled('admitAfterEndEventMs'),
    freeSlotDispatchMs: pooled('freeSlotDispatchMs'),
    failedJobs: rs.reduce((a, x) => a + x.failed, 0),
    jobsOnAnotherDevice: rs.reduce((a, x) => a + x.wrongDevice, 0),
    perRoundJobsPerSecond: rs.map((x) => round(x.jobsPerSecond)),
    perRoundMeanAtOnce: rs.map((x) => round(x.meanAtOnce)),
  }
}

export async function packing({ quick }: { quick: boolean }): Promise<BenchResult> {
  const s = sizes(quick)
  const machine = machineLoad()
  const stack = await startStack({ withHost: false, env: { SIMULATE_STEP_MS: '0' } })
  const scenarioFile = path.join(stack.dataDir, 'nvidia-smi.json')
  const saved = { PATH: process.env.PATH, NVIDIA_SMI_SCENARIO: process.env.NVIDIA_SMI_SCENARIO }
  // The hosts run in this process and read the GPU through the stand-in, like gpu-packing.test.ts.
  process.env.PATH = `${STAND_IN}${path.delimiter}${process.env.PATH ?? ''}`
  process.env.NVIDIA_SMI_SCENARIO = scenarioFile
  const ids = { prefix: `bench-pack-${randomUUID().slice(0, 8)}-`, all: [] as string[] }
  const order = ['baseline', 'packed', 'byVram', 'filled'] as const
  const runs: Record<(typeof order)[number], TrialRun[]> = {
    baseline: [],
    packed: [],
    byVram: [],
    filled: [],
  }
  try {
    for (let r = 0; r < s.rounds; r++) {
      // The two that form the ratio swap places every round, so load from others falls on both alike.
      const names = r % 2 === 0 ? order : (['packed', 'baseline', 'byVram', 'filled'] as const)
      for (const name of names) {
        runs[name].push(await runTrial(stack, scenarioFile, s.trials[name], s, ids))
        console.log(`  round ${r + 1}: ${s.trials[name].name} done`)
      }
    }
  } finally {
    process.env.PATH = saved.PATH
    if (saved.NVIDIA_SMI_SCENARIO === undefined) delete process.env.NVIDIA_SMI_SCENARIO
    else process.env.NVIDIA_SMI_SCENARIO = saved.NVIDIA_SMI_SCENARIO
    await removeJobs(stack, ids.prefix, ids.all)
    await stack.close()
  }
  const busy = machine.busyPercent()

  const byTrial = Object.fromEntries(
    order.map((name) => [name, summarizeTrial(s.trials[name], runs[name])]),
  ) as Record<(typeof order)[number], TrialSummary>
  const b = byTrial.baseline
  const p = byTrial.packed
  const v = byTrial.byVram
  const f = byTrial.filled
  const ratios = {
    packedJobsPerSecondOverOnePerGpu: round(ratio(p.jobsPerSecond, b.jobsPerSecond)),
    byVramJobsPerSecondOverOnePerGpu: round(ratio(v.jobsPerSecond, b.jobsPerSecond)),
    packedMeanAtOnceOverOnePerGpu: round(ratio(p.meanAtOnce, b.meanAtOnce)),
    packedAdmitP50OverFreeSlotP50: round(ratio(p.admitAfterHandlerEndMs.p50, p.freeSlotDispatchMs.p50)),
    packedAdmitP95OverFreeSlotP95: round(ratio(p.admitAfterHandlerEndMs.p95, p.freeSlotDispatchMs.p95)),
    byVramAdmitP50OverFreeSlotP50: round(ratio(v.admitAfterHandlerEndMs.p50, v.freeSlotDispatchMs.p50)),
    byVramAdmitP95OverFreeSlotP95: round(ratio(v.admitAfterHandlerEndMs.p95, v.freeSlotDispatchMs.p95)),
  }
  printTable(
    `packing: ${s.holdMs} ms jobs on one stand-in H200 (${H200.memoryTotalMb} MiB), median of rounds`,
    [
      ['trial', 'jobs', 'MiB each', 'allowed', 'max at once', 'mean at once', 'jobs/s', 'failed'],
      ...order.map((name) => {
        const t = byTrial[name]
        return [
          t.trial,
          String(t.jobs),
          String(t.vramMb),
          String(t.allowedAtOnce),
          String(t.maxAtOnce),
          t.meanAtOnce,
          t.jobsPerSecond,
          String(t.failedJobs),
        ]
      }),
    ],
  )
  printTable('time to admit (ms): a waiting job on a full GPU, against dispatch to a free slot', [
    [
      'trial',
      'end in job -> next running p50',
      'p95',
      'end event -> next running p50',
      'p95',
      'free slot: add -> running p50',
      'p95',
    ],
    ...order.map((name) => {
      const t = byTrial[name]
      return [
        t.trial,
        t.admitAfterHandlerEndMs.p50,
        t.admitAfterHandlerEndMs.p95,
        t.admitAfterEndEventMs.p50,
        t.admitAfterEndEventMs.p95,
        t.freeSlotDispatchMs.p50,
        t.freeSlotDispatchMs.p95,
      ]
    }),
  ])
  printTable(
    'ratios',
    Object.entries(ratios).map(([k, x]) => [k, x]),
  )
  console.log(
    `filled GPU: room for ${f.allowedAtOnce}, at most ${f.maxAtOnce} ran at once (host gauge: ${f.hostGaugeMaxJobs}, least free ${f.hostGaugeMinFreeMb} MiB)`,
  )
  console.log(`(load average at start ${machine.loadAverage1mAtStart}, machine CPU busy ${busy}% meanwhile)`)
  return {
    name: 'packing',
    issue: 'benchmark suite 6: packing: jobs per GPU and the time to admit the next job on a stand-in GPU',
    parameters: {
      gpu: H200,
      holdMs: s.holdMs,
      rounds: s.rounds,
      freeSlotJobs: s.freeJobs,
      freeSlotWarmup: s.warmup,
      trials: s.trials,
    },
    notes: [
      'GPU: the stand-in nvidia-smi (tests/fixtures/nvidia-smi, a Node script, spawned twice per refresh of the host: each admission and every second while a job waits) reporting one H200 of 143771 MiB; no CUDA work runs, so admission is by the reservations (gpu.vramMb) and what the stand-in says other processes hold.',
      'Hosts: real GpuHost instances in this process (startHost, tests/helpers/stack.ts) on real Redis, Postgres and s3rver, one per trial, each job in its own job process (warm spares); the fixture tests/fixtures/handlers/bench-holds.ts holds its device for holdMs and returns its own start and end times.',
      'Jobs go straight onto the queue (queue.addBulk, as any BullMQ producer may) with gpu {vramMb, exclusive: false}, all at once, more than fit: every job after the first ones waits for room.',
      "At once: the overlap of the handlers' own [start, end] intervals (independent of the host's bookkeeping); mean is time-weighted over the first start to the last end; the host's gauges gpu_worker_running_jobs_per_gpu and gpu_worker_gpu_memory_free_bytes sampled every 50 ms are reported beside.",
      "Time to admit: for the k-th job to end (FIFO pairing), the next waiting job's `running` event (its first event, seen on Redis) minus the end of the handler in its process, and minus the ended job's terminal event. The latter can be negative: the host releases the room once the process group is gone, before it publishes the terminal event.",
      "Baseline for jobs/s and at-once: the same jobs on a host with MAX_JOBS_PER_GPU=1 (one job per GPU), in the same run, the order of the two swapped every round. Baseline for time to admit: dispatch to a free slot on the same host: queue.add -> the job's `running` event, one job at a time on the idle GPU (the first ones discarded as warm-up).",
    ],
    results: {
      byTrial,
      ratios,
      machineLoad: { loadAverage1mAtStart: machine.loadAverage1mAtStart, machineCpuBusyPercent: busy },
    },
  }
}

const round = (n: number): number => Math.round(n * 100) / 100
