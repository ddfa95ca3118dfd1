/**
 * Helpers shared by the throughput, submission, scale, artifacts and packing benchmarks: submit bodies,
 * the batch route in chunks, a subscription to a run's events and a counter of its terminal events,
 * process RSS from /proc, and removing a run's jobs.
 */
import { readFile } from 'node:fs/promises'
import { like } from 'drizzle-orm'
import { MAX_BATCH_JOBS } from '../schema/api.ts'
import { createRedis } from '../schema/clients.ts'
import { jobs } from '../schema/db/tables.ts'
import type { ProgressEvent } from '../schema/events.ts'
import { eventLogKey, seqKey } from '../schema/keys.ts'
import { type Stack, TERMINAL, TEST_REDIS_URL } from '../tests/helpers/stack.ts'
import { clock } from './lib.ts'

/** A valid train_lora submit body (the gateway checks the params even when a fixture handler runs). */
export const trainBody = (jobId: string, extra: Record<string, unknown> = {}) => ({
  jobId,
  type: 'train_lora',
  params: { baseModel: 'sd15', datasetPath: 'ds' },
  ...extra,
})

/** JSON POST to the stack's gateway; throws unless it answers 200 or 202. */
export async function postJson(stack: Stack, route: string, body: unknown): Promise<void> {
  const res = await fetch(stack.url(route), {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(body),
  })
  const text = await res.text()
  if (res.status !== 202 && res.status !== 200) throw new Error(`${route} answered ${res.status}: ${text}`)
}

/** `POST /api/jobs/batch` of `bodies`, `perRequest` at a time (at most the route's MAX_BATCH_JOBS). */
export async function submitBatches(
  stack: Stack,
  bodies: unknown[],
  perRequest = MAX_BATCH_JOBS,
): Promise<void> {
  for (let i = 0; i < bodies.length; i += perRequest)
    await postJson(stack, '/api/jobs/batch', { jobs: bodies.slice(i, i + perRequest) })
}

/**
 * Counts the terminal events of jobs whose id starts with `idPrefix` (one Redis pattern subscription).
 * `await counter.reached(n)` resolves once n jobs have ended.
 */
export async function terminalCounter(idPrefix: string): Promise<{
  ended: () => number
  failed: () => number
  reached(n: number): Promise<void>
  close(): void
}> {
  let ended = 0
  let failed = 0
  let waiter: { n: number; resolve: () => void } | null = null
  const sub = await subscribeEvents(idPrefix, (event) => {
    if (!TERMINAL.includes(event.status)) return
    ended += 1
    if (event.status !== 'completed') failed += 1
    if (waiter && ended >= waiter.n) waiter.resolve()
  })
  return {
    ended: () => ended,
    failed: () => failed,
    reached: (n) =>
      ended >= n
        ? Promise.resolve()
        : new Promise<void>((resolve) => {
            waiter = { n, resolve }
          }),
    close: sub.close,
  }
}

/**
 * Calls `onEvent` with every progress event of the jobs whose id starts with `idPrefix` and the moment
 * it arrived (`clock()`), over one Redis pattern subscription; `close()` ends it.
 */
export async function subscribeEvents(
  idPrefix: string,
  onEvent: (event: ProgressEvent, at: number) => void,
): Promise<{ close(): void }> {
  const sub = createRedis(TEST_REDIS_URL)
  await sub.connect()
  sub.on('pmessage', (_p: string, _c: string, raw: string) =>
    onEvent(JSON.parse(raw) as ProgressEvent, clock()),
  )
  await sub.psubscribe(`progress:${idPrefix}*`)
  return { close: () => sub.disconnect() }
}

/** Resident set size of a process in bytes (VmRSS in /proc), or NaN when it is gone. */
export async function rssOf(pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8').catch(() => '')
  const kb = status.match(/^VmRSS:\s+(\d+) kB/m)?.[1]
  return kb ? Number(kb) * 1024 : Number.NaN
}

/** Samples `rssOf(pid)` every `everyMs` until `stop()`, which returns the samples. */
export function sampleRss(pid: number, everyMs = 200): { stop(): Promise<number[]> } {
  const samples: number[] = []
  let running = true
  const loop = (async () => {
    while (running) {
      const rss = await rssOf(pid)
      if (Number.isFinite(rss)) samples.push(rss)
      await new Promise((r) => setTimeout(r, everyMs))
    }
  })()
  return {
    stop: async () => {
      running = false
      await loop
      return samples
    },
  }
}

export const MiB = 2 ** 20

/** Removes a run's job rows and their Redis seq/event keys (ids start with `idPrefix`). */
export async function removeJobs(stack: Stack, idPrefix: string, ids: string[]): Promise<void> {
  for (let k = 0; k < ids.length; k += 500)
    await stack.redis
      .del(...ids.slice(k, k + 500).flatMap((id) => [seqKey(id), eventLogKey(id)]))
      .catch(() => 0)
  await stack.database.db
    .delete(jobs)
    .where(like(jobs.id, `${idPrefix}%`))
    .catch(() => {})
}
