/**
 * submission: jobs per second into the queue through `POST /api/train` (one at a time and 16 in flight)
 * and `POST /api/jobs/batch` (N per request), against BullMQ `addBulk` of the same N straight to Redis,
 * in interleaved rounds. No GPU host runs: the jobs stay queued and are removed afterwards.
 */
import { randomUUID } from 'node:crypto'
import { Queue } from 'bullmq'
import { MAX_BATCH_JOBS } from '../schema/api.ts'
import { createRedis } from '../schema/clients.ts'
import { startStack, TEST_REDIS_URL } from '../tests/helpers/stack.ts'
import { postJson, removeJobs, submitBatches, trainBody } from './jobs.ts'
import { type BenchResult, clock, machineLoad, printTable, ratio } from './lib.ts'

const IN_FLIGHT = 16

export async function submission({ quick }: { quick: boolean }): Promise<BenchResult> {
  const jobsPerRound = quick ? 50 : 500
  const rounds = quick ? 1 : 5
  const stack = await startStack({
    withHost: false,
    // The per-token rate limit and queued-job quota would measure themselves, not the route.
    env: { RATE_LIMIT_RPS: '100000', MAX_QUEUED_JOBS_PER_TOKEN: '10000000' },
  })
  const bullPrefix = `bench-${randomUUID().slice(0, 8)}`
  const bullQueue = new Queue('bench-submission', {
    connection: createRedis(TEST_REDIS_URL),
    prefix: bullPrefix,
  })
  await bullQueue.waitUntilReady()
  const idPrefix = `bench-sub-${randomUUID().slice(0, 8)}-`
  const ids: string[] = []
  let n = 0
  const bodies = (count: number) =>
    Array.from({ length: count }, () => {
      const id = `${idPrefix}${n++}`
      ids.push(id)
      return trainBody(id)
    })
  const timed = async (f: () => Promise<void>): Promise<number> => {
    const t0 = clock()
    await f()
    return jobsPerRound / ((clock() - t0) / 1000)
  }
  const methods: Record<string, () => Promise<number>> = {
    'POST /api/train, one at a time': () =>
      timed(async () => {
        for (const b of bodies(jobsPerRound)) await postJson(stack, '/api/train', b)
      }),
    [`POST /api/train, ${IN_FLIGHT} in flight`]: () =>
      timed(async () => {
        const queue = bodies(jobsPerRound)
        await Promise.all(
          Array.from({ length: IN_FLIGHT }, async () => {
            for (let b = queue.pop(); b; b = queue.pop()) await postJson(stack, '/api/train', b)
          }),
        )
      }),
    [`POST /api/jobs/batch, ${MAX_BATCH_JOBS} per request`]: () =>
      timed(() => submitBatches(stack, bodies(jobsPerRound))),
    [`BullMQ addBulk, ${MAX_BATCH_JOBS} per call`]: () =>
      timed(async () => {
        const items = bodies(jobsPerRound).map((b) => ({ name: b.type, data: b, opts: { jobId: b.jobId } }))
        for (let i = 0; i < items.length; i += MAX_BATCH_JOBS)
          await bullQueue.addBulk(items.slice(i, i + MAX_BATCH_JOBS))
      }),
    'BullMQ add, one at a time': () =>
      timed(async () => {
        for (const b of bodies(jobsPerRound)) await bullQueue.add(b.type, b, { jobId: b.jobId })
      }),
  }
  const names = Object.keys(methods)
  const rates: Record<string, number[]> = Object.fromEntries(names.map((m) => [m, []]))
  const machine = machineLoad()
  try {
    // Warm-up: the gateway's and BullMQ's code paths and scripts loaded once.
    for (const m of names) await methods[m]?.()
    for (let r = 0; r < rounds; r++) {
      const order = r % 2 === 0 ? names : [...names].reverse()
      for (const m of order) rates[m]?.push(await (methods[m] as () => Promise<number>)())
    }
  } finally {
    await removeJobs(stack, idPrefix, ids)
    await bullQueue.obliterate({ force: true }).catch(() => {})
    await bullQueue.close()
    await stack.close()
  }
  const busy = machine.busyPercent()
  const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[xs.length >> 1] ?? Number.NaN
  const jobsPerSecond = Object.fromEntries(names.map((m) => [m, Math.round(median(rates[m] ?? []))]))
  const bulk = jobsPerSecond[`BullMQ addBulk, ${MAX_BATCH_JOBS} per call`] ?? Number.NaN
  printTable(`submission: jobs per second (median of ${rounds} rounds of ${jobsPerRound} jobs)`, [
    ['method', 'jobs/s', 'ratio to addBulk'],
    ...names.map((m) => [m, String(jobsPerSecond[m]), ratio(jobsPerSecond[m] ?? Number.NaN, bulk)]),
  ])
  console.log(`(load average at start ${machine.loadAverage1mAtStart}, machine CPU busy ${busy}% meanwhile)`)
  return {
    name: 'submission',
    issue: 'benchmark suite 4: jobs/s through POST /api/train and the batch route against BullMQ addBulk',
    parameters: { jobsPerRound, rounds, inFlight: IN_FLIGHT, perBatchRequest: MAX_BATCH_JOBS },
    notes: [
      'Ours: the gateway of startStack() (in this process, real Redis and Postgres), no GPU host; every job is validated, written to Postgres (queued) and added to BullMQ, as in production. RATE_LIMIT_RPS and MAX_QUEUED_JOBS_PER_TOKEN raised so the limits do not measure themselves.',
      "Baseline: BullMQ Queue.addBulk of the same envelopes, 100 per call (the batch route's limit), on the same Redis, and Queue.add one at a time; no Postgres row.",
      'A round runs every method once on fresh job ids; the order flips every round; the figure is the median of the rounds.',
    ],
    results: {
      jobsPerSecond,
      ratiosToAddBulk: Object.fromEntries(
        names.map((m) => [m, Math.round(ratio(jobsPerSecond[m] ?? Number.NaN, bulk) * 1000) / 1000]),
      ),
      machineLoad: { loadAverage1mAtStart: machine.loadAverage1mAtStart, machineCpuBusyPercent: busy },
    },
  }
}
