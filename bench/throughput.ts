/**
 * throughput: no-op jobs per second through one GPU host at 1, 2 and 4 slots, against a bare
 * fork-run-exit of a tiny .mjs at the same parallelism, measured in interleaved rounds.
 */
import { fork } from 'node:child_process'
import { randomUUID } from 'node:crypto'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { startStack } from '../tests/helpers/stack.ts'
import { removeJobs, submitBatches, terminalCounter, trainBody } from './jobs.ts'
import {
  BENCH_DIR,
  type BenchResult,
  type CpuByProcess,
  clock,
  cpuByProcess,
  cpuMsPerJob,
  machineLoad,
  median,
  printTable,
  ratio,
} from './lib.ts'

const FIXTURE = path.resolve(BENCH_DIR, '../tests/fixtures/handlers/bench-noop.ts')
/** Slot counts measured; --quick measures the smallest and the largest. */
const SLOTS = [1, 2, 4]
const QUICK_SLOTS = [1, 4]

/** Runs `n` fork-run-exit processes of `file`, `parallel` at a time; returns the wall seconds. */
async function forkRunExit(file: string, n: number, parallel: number, execArgv: string[]): Promise<number> {
  let next = 0
  const t0 = clock()
  const lane = async () => {
    while (next < n) {
      next += 1
      // Same options as gpu-host/runner.ts: detached, piped stdio, IPC.
      const child = fork(file, [], { detached: true, execArgv, stdio: ['ignore', 'pipe', 'pipe', 'ipc'] })
      await new Promise<void>((resolve, reject) => {
        child.once('exit', (code) => (code === 0 ? resolve() : reject(new Error(`fork exited ${code}`))))
        child.once('error', reject)
      })
    }
  }
  await Promise.all(Array.from({ length: parallel }, lane))
  return (clock() - t0) / 1000
}

interface Side {
  jobsPerSecond: number[]
}

export async function throughput({ quick }: { quick: boolean }): Promise<BenchResult> {
  const jobsPerRound = quick ? 4 : 24
  const rounds = quick ? 1 : 3
  const slotCounts = quick ? QUICK_SLOTS : SLOTS
  const dir = await mkdtemp(path.join(tmpdir(), 'bench-throughput-'))
  const child = path.join(dir, 'noop.mjs')
  // The baseline's job: start, tell the parent it ran (as a job reports its result), exit.
  await writeFile(child, 'process.send({ done: true }, () => process.exit(0))\n')
  const machine = machineLoad()
  const perSlots: Record<
    string,
    {
      ours: Side
      fork: Side
      forkTsx: Side
      failed: number
      cpu: { ours: CpuByProcess[]; fork: CpuByProcess[] }
    }
  > = {}
  try {
    for (const slots of slotCounts) {
      const stack = await startStack({
        env: { SIMULATE_STEP_MS: '0', GPU_SLOTS: String(slots), RATE_LIMIT_RPS: '100000' },
        handlerModules: { train_lora: FIXTURE },
      })
      const idPrefix = `bench-tp-${randomUUID().slice(0, 8)}-`
      const counter = await terminalCounter(idPrefix)
      const ids: string[] = []
      let submitted = 0
      const cpu: { ours: CpuByProcess[]; fork: CpuByProcess[] } = { ours: [], fork: [] }
      const oursRound = async (n: number): Promise<number> => {
        const bodies = Array.from({ length: n }, () => {
          const id = `${idPrefix}${submitted++}`
          ids.push(id)
          return trainBody(id)
        })
        const cpu0 = cpuByProcess()
        const t0 = clock()
        await submitBatches(stack, bodies)
        await counter.reached(submitted)
        const seconds = (clock() - t0) / 1000
        cpu.ours.push(cpuMsPerJob(cpu0, cpuByProcess(), n))
        return seconds
      }
      /** The baseline's round, with its CPU per job. */
      const forkRound = async (n: number): Promise<number> => {
        const cpu0 = cpuByProcess()
        const seconds = await forkRunExit(child, n, slots, [])
        cpu.fork.push(cpuMsPerJob(cpu0, cpuByProcess(), n))
        return seconds
      }
      const out = {
        ours: { jobsPerSecond: [] },
        fork: { jobsPerSecond: [] },
        forkTsx: { jobsPerSecond: [] },
      } as {
        ours: Side
        fork: Side
        forkTsx: Side
      }
      try {
        // Warm-up: every slot's spare forked and the stack's code paths taken once.
        await oursRound(quick ? slots : slots * 2)
        await forkRunExit(child, slots, slots, [])
        cpu.ours.length = 0
        for (let r = 0; r < rounds; r++) {
          // Alternate which side goes first, so that load from others falls on both alike.
          const sides = [
            async () => out.ours.jobsPerSecond.push(jobsPerRound / (await oursRound(jobsPerRound))),
            async () => out.fork.jobsPerSecond.push(jobsPerRound / (await forkRound(jobsPerRound))),
            // The extra tsx side is for the full run only (it is the slowest).
            ...(quick
              ? []
              : [
                  async () =>
                    out.forkTsx.jobsPerSecond.push(
                      jobsPerRound / (await forkRunExit(child, jobsPerRound, slots, ['--import', 'tsx'])),
                    ),
                ]),
          ]
          if (r % 2 === 1) sides.reverse()
          for (const side of sides) await side()
        }
      } finally {
        counter.close()
        await removeJobs(stack, idPrefix, ids)
        await stack.close()
      }
      perSlots[slots] = { ...out, failed: counter.failed(), cpu }
      console.log(`  ${slots} slot(s) done`)
    }
  } finally {
    await rm(dir, { recursive: true, force: true })
  }
  const busy = machine.busyPercent()
  const table: Record<string, Record<string, number>> = {}
  /** The median of each field over the rounds. */
  const cpuMedian = (rounds: CpuByProcess[]): CpuByProcess => ({
    thisProcess: median(rounds.map((r) => r.thisProcess)),
    endedChildren: median(rounds.map((r) => r.endedChildren)),
    postgres: median(rounds.map((r) => r.postgres)),
    redis: median(rounds.map((r) => r.redis)),
  })
  const cpuTable: Record<string, { ours: CpuByProcess; bareFork: CpuByProcess }> = {}
  for (const slots of slotCounts) {
    const p = perSlots[slots]
    if (!p) continue
    const ours = median(p.ours.jobsPerSecond)
    const bare = median(p.fork.jobsPerSecond)
    const tsx = median(p.forkTsx.jobsPerSecond)
    table[slots] = {
      oursJobsPerSecond: round(ours),
      bareForkJobsPerSecond: round(bare),
      tsxForkJobsPerSecond: round(tsx),
      oursOverBareFork: round(ratio(ours, bare)),
      oursOverTsxFork: round(ratio(ours, tsx)),
      failedJobs: p.failed,
    }
    cpuTable[slots] = { ours: cpuMedian(p.cpu.ours), bareFork: cpuMedian(p.cpu.fork) }
  }
  printTable('throughput: no-op jobs per second (median of rounds)', [
    ['slots', 'ours', 'bare fork', 'fork --import tsx', 'ours / bare (goal >= 0.8)', 'ours / tsx fork'],
    ...slotCounts.map((s) => {
      const t = table[s] ?? {}
      return [
        String(s),
        t.oursJobsPerSecond ?? Number.NaN,
        t.bareForkJobsPerSecond ?? Number.NaN,
        t.tsxForkJobsPerSecond ?? Number.NaN,
        t.oursOverBareFork ?? Number.NaN,
        t.oursOverTsxFork ?? Number.NaN,
      ]
    }),
  ])
  printTable('throughput: CPU per job (ms, median of rounds)', [
    ['slots', 'side', 'this process', 'job processes', 'postgres', 'redis', 'total'],
    ...slotCounts.flatMap((s) => {
      const c = cpuTable[s]
      if (!c) return []
      return (
        [
          ['ours', c.ours],
          ['bare fork', c.bareFork],
        ] as const
      ).map(([side, v]) => [
        String(s),
        side,
        v.thisProcess,
        v.endedChildren,
        v.postgres,
        v.redis,
        round(v.thisProcess + v.endedChildren + v.postgres + v.redis),
      ])
    }),
  ])
  console.log(`(load average at start ${machine.loadAverage1mAtStart}, machine CPU busy ${busy}% meanwhile)`)
  return {
    name: 'throughput',
    issue: 'benchmark suite 2: no-op jobs per second per host at 1, 2, 4 slots against bare fork-run-exit',
    parameters: { slots: slotCounts, jobsPerRound, rounds, warmupJobsPerSlot: 2, simulateStepMs: 0 },
    notes: [
      "Ours: startStack() (gateway and GPU host in this process, real Redis, Postgres, s3rver), GPU_SLOTS=1/2/4 virtual slots, handler tests/fixtures/handlers/bench-noop.ts; a round = POST /api/jobs/batch of the round's jobs -> the last terminal event on Redis. Each job runs in a fresh child process (from the pool of warm spares) compiled by esbuild, no tsx; the fixture handler, a .ts module, is compiled by esbuild too (gpu-host/child-bundle.ts buildHandlerBundle).",
      "Baseline: child_process.fork() of a one-line .mjs that sends one IPC message and exits, same fork options as gpu-host/runner.ts, the same number of processes with the same parallelism; extra: the same under --import tsx (the loader the host's job processes ran under before the compiled child).",
      'Rounds alternate the order of the three sides; the figure is the median of the rounds.',
      "CPU per job (cpuMsPerJobBySlots): /proc deltas around each round of ours and of the bare fork: this process (gateway, host, s3rver and the benchmark), its ended children (the job processes, or the baseline's forks), every postgres and redis-server process (shared with whatever else runs on the machine).",
    ],
    results: {
      bySlots: table,
      cpuMsPerJobBySlots: cpuTable,
      machineLoad: { loadAverage1mAtStart: machine.loadAverage1mAtStart, machineCpuBusyPercent: busy },
    },
  }
}

const round = (n: number): number => Math.round(n * 100) / 100
