/**
 * scale: 10,000 queued jobs of mixed priority while the only GPU host's one slot is busy: the host's RSS
 * while they wait (goal: flat), its `gpu_worker_queue_jobs` gauge against BullMQ's own counts (the truth),
 * and `GET /api/jobs` paging time over every page.
 */
import { randomUUID } from 'node:crypto'
import { setTimeout as sleep } from 'node:timers/promises'
import type { JobListBody } from '../schema/api.ts'
import { startHostProcess } from '../tests/helpers/host-process.ts'
import { addFixtureJob, isolatedDatabase, startStack, waitFor } from '../tests/helpers/stack.ts'
import { MiB, sampleRss, submitBatches, trainBody } from './jobs.ts'
import { type BenchResult, clock, machineLoad, printTable, rounded, summarize } from './lib.ts'

const PAGE = 100

/** One gauge value from a Prometheus text body, e.g. `gpu_worker_queue_jobs{state="waiting"}`. */
function gaugeValue(text: string, series: string): number {
  const line = text.split('\n').find((l) => l.startsWith(`${series} `))
  return line ? Number(line.slice(series.length + 1)) : Number.NaN
}

export async function scale({ quick }: { quick: boolean }): Promise<BenchResult> {
  const total = quick ? 300 : 10_000
  const waitSec = quick ? 2 : 20
  const idleSec = quick ? 1 : 3
  // A database of its own: the counts and pages are this run's jobs only.
  const iso = await isolatedDatabase()
  const stack = await startStack({
    withHost: false,
    databaseUrl: iso.url,
    env: { RATE_LIMIT_RPS: '100000', MAX_QUEUED_JOBS_PER_TOKEN: '10000000' },
  })
  const host = await startHostProcess(stack, 'scale', { GPU_SLOTS: '1', SHUTDOWN_GRACE_SEC: '1' })
  const machine = machineLoad()
  try {
    // Keep the host's one slot busy, so that every job after it waits.
    const blocker = await addFixtureJob(stack, 'hangs', { timeoutSec: 3600, maxAttempts: 1 })
    await stack.waitStatus(blocker, ['running'], 30_000)
    const metrics = async () => (await fetch(`http://127.0.0.1:${host.metricsPort}/metrics`)).text()
    const idle = sampleRss(host.pid)
    await sleep(idleSec * 1000)
    const idleRss = await idle.stop()

    const during = sampleRss(host.pid)
    const idPrefix = `bench-scale-${randomUUID().slice(0, 8)}-`
    // Mixed priority: a third without one (BullMQ's waiting list), the rest at priority 1 or 5 (prioritized).
    const priorities = [undefined, 1, 5]
    const bodies = Array.from({ length: total }, (_, i) =>
      trainBody(`${idPrefix}${i}`, priorities[i % 3] === undefined ? {} : { priority: priorities[i % 3] }),
    )
    const t0 = clock()
    await submitBatches(stack, bodies)
    const submitSec = (clock() - t0) / 1000
    const duringRss = await during.stop()

    const waiting = sampleRss(host.pid)
    await sleep(waitSec * 1000)
    const waitingRss = await waiting.stop()

    // The host samples the queue every 5 s: wait for a sample taken after the last submission.
    const truth = await stack.queue.getJobCounts('waiting', 'prioritized', 'active')
    const gauge = await waitFor(
      async () => {
        const text = await metrics()
        const g = {
          waiting: gaugeValue(text, 'gpu_worker_queue_jobs{state="waiting"}'),
          prioritized: gaugeValue(text, 'gpu_worker_queue_jobs{state="prioritized"}'),
          active: gaugeValue(text, 'gpu_worker_queue_jobs{state="active"}'),
        }
        return g.waiting + g.prioritized === (truth.waiting ?? 0) + (truth.prioritized ?? 0) ? g : null
      },
      15_000,
      'the queue gauge to match the queue',
    ).catch(async () => ({ mismatch: await metrics() }))

    // Paging: every page of GET /api/jobs, unfiltered and ?status=queued.
    const pageTimes: Record<string, number[]> = { all: [], queued: [] }
    const seen: Record<string, number> = { all: 0, queued: 0 }
    for (const [name, filter] of [
      ['all', ''],
      ['queued', '&status=queued'],
    ] as const) {
      let cursor: string | null = null
      do {
        const t = clock()
        const res = await fetch(
          stack.url(
            `/api/jobs?limit=${PAGE}${filter}${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ''}`,
          ),
        )
        if (res.status !== 200) throw new Error(`GET /api/jobs answered ${res.status}: ${await res.text()}`)
        const body = (await res.json()) as JobListBody
        pageTimes[name]?.push(clock() - t)
        seen[name] = (seen[name] ?? 0) + body.jobs.length
        cursor = body.nextCursor ?? null
      } while (cursor)
    }
    const busy = machine.busyPercent()

    const mib = (xs: number[]) => rounded(summarize(xs.map((x) => x / MiB)), 1)
    const rss = { idle: mib(idleRss), submitting: mib(duringRss), waiting: mib(waitingRss) }
    // Growth: the highest sample once the jobs arrive over the idle median (V8 may hand memory back meanwhile).
    const growthMiB = Math.round((Math.max(rss.submitting.max, rss.waiting.max) - rss.idle.p50) * 10) / 10
    const pages = {
      all: rounded(summarize(pageTimes.all ?? []), 2),
      queued: rounded(summarize(pageTimes.queued ?? []), 2),
    }
    printTable(`scale: GPU host RSS (MiB) with ${total} jobs queued behind one busy slot`, [
      ['phase', 'samples', 'p50', 'max'],
      ['idle (1 job running)', String(rss.idle.n), rss.idle.p50, rss.idle.max],
      [
        `while ${total} are submitted (${submitSec.toFixed(1)} s)`,
        String(rss.submitting.n),
        rss.submitting.p50,
        rss.submitting.max,
      ],
      [`${waitSec} s with them waiting`, String(rss.waiting.n), rss.waiting.p50, rss.waiting.max],
    ])
    console.log(`host RSS growth (max while submitting or waiting - idle p50): ${growthMiB} MiB`)
    printTable('scale: queue depth, gpu_worker_queue_jobs vs BullMQ getJobCounts', [
      ['state', 'metric', 'truth'],
      ...(['waiting', 'prioritized', 'active'] as const).map((s) => [
        s,
        'mismatch' in gauge ? 'no match in 15 s' : String(gauge[s]),
        String(truth[s]),
      ]),
    ])
    printTable(`scale: GET /api/jobs?limit=${PAGE} page time (ms)`, [
      ['listing', 'pages', 'jobs seen', 'p50', 'p95', 'max'],
      ['all jobs', String(pages.all.n), String(seen.all), pages.all.p50, pages.all.p95, pages.all.max],
      [
        '?status=queued',
        String(pages.queued.n),
        String(seen.queued),
        pages.queued.p50,
        pages.queued.p95,
        pages.queued.max,
      ],
    ])
    console.log(
      `(load average at start ${machine.loadAverage1mAtStart}, machine CPU busy ${busy}% meanwhile)`,
    )
    return {
      name: 'scale',
      issue: 'benchmark suite 5: 10,000 queued jobs of mixed priority',
      parameters: {
        queuedJobs: total,
        priorities: 'none / 1 / 5, in turn',
        waitSeconds: waitSec,
        pageLimit: PAGE,
      },
      notes: [
        'A GPU host in its own process (tests/fixtures/host-process.ts, GPU_SLOTS=1) whose one slot runs a job that hangs, so every submitted job waits; its RSS is VmRSS from /proc every 200 ms.',
        "Jobs are submitted through POST /api/jobs/batch (100 per request) to a gateway on a database of its own, so GET /api/jobs pages over exactly this run's jobs (10,000 + the blocker).",
        'Truth for the depth: BullMQ getJobCounts on the same queue; the host samples it into gpu_worker_queue_jobs{state} every 5 s.',
      ],
      results: {
        submitSeconds: Math.round(submitSec * 10) / 10,
        hostRssMiB: rss,
        hostRssGrowthMiB: growthMiB,
        queueDepth: { metric: 'mismatch' in gauge ? null : gauge, truth, matches: !('mismatch' in gauge) },
        pagingMs: pages,
        jobsSeenPaging: seen,
        machineLoad: { loadAverage1mAtStart: machine.loadAverage1mAtStart, machineCpuBusyPercent: busy },
      },
    }
  } finally {
    host.proc.kill('SIGTERM')
    await host.exited
    await stack.close()
    await iso.drop()
  }
}
