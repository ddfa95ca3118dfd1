/**
 * `GET /api/queue`: how deep the queue is. BullMQ's counts by state and the oldest waiting job are the
 * fleet's; the unfinished jobs by type and the last hour's outcomes come from the job rows, and with API
 * tokens they are the caller's own. The oldest waiting job is the older of BullMQ's waiting ones and the
 * `queued` rows: a job a host put back until one with its engine or GPU memory is free waits as BullMQ's
 * `delayed`, like a retry's backoff, yet it is queued all the same.
 */
import type { Queue } from 'bullmq'
import { and, count, eq, gt, inArray, min, type SQL } from 'drizzle-orm'
import { Hono } from 'hono'
import type { Db } from '../../schema/db/connect.ts'
import { jobs } from '../../schema/db/tables.ts'
import { JOB_TYPES } from '../../schema/params/index.ts'
import { oldestWaitingAt, QUEUE_STATES, type QueueBody, type TypeCounts } from '../../schema/queue.ts'
import { onBackend } from '../errors.ts'

const HOUR_MS = 3_600_000
const UNFINISHED = ['queued', 'running', 'retrying'] as const
const ENDED = ['completed', 'failed'] as const

/**
 * The row counts of `GET /api/queue`: unfinished by type and status, ended in the last hour by status;
 * only `owner`'s when given.
 */
async function rowCounts(
  db: Db,
  owner: string | undefined,
  now: number,
): Promise<Pick<QueueBody, 'byType' | 'lastHour'>> {
  const mine: SQL[] = owner === undefined ? [] : [eq(jobs.owner, owner)]
  const [unfinished, ended] = await Promise.all([
    db
      .select({ type: jobs.type, status: jobs.status, n: count() })
      .from(jobs)
      .where(and(inArray(jobs.status, [...UNFINISHED]), ...mine))
      .groupBy(jobs.type, jobs.status),
    db
      .select({ status: jobs.status, n: count() })
      .from(jobs)
      .where(and(inArray(jobs.status, [...ENDED]), gt(jobs.finishedAt, new Date(now - HOUR_MS)), ...mine))
      .groupBy(jobs.status),
  ])
  const byType = Object.fromEntries(
    JOB_TYPES.map((t) => [t, { queued: 0, running: 0, retrying: 0 } as TypeCounts]),
  ) as QueueBody['byType']
  for (const r of unfinished) {
    const counts = byType[r.type]
    if (counts && (UNFINISHED as readonly string[]).includes(r.status))
      counts[r.status as keyof TypeCounts] = r.n
  }
  const lastHour = { completed: 0, failed: 0 }
  for (const r of ended) if (r.status === 'completed' || r.status === 'failed') lastHour[r.status] = r.n
  return { byType, lastHour }
}

/** When the oldest `queued` row, whoever's, was created (ms), or null. */
async function oldestQueuedRowAt(db: Db): Promise<number | null> {
  const [row] = await db
    .select({ at: min(jobs.createdAt) })
    .from(jobs)
    .where(eq(jobs.status, 'queued'))
  return row?.at ? row.at.getTime() : null
}

export interface QueueDeps {
  queue: Queue
  db: Db
  authRequired: boolean
}

/** @example app.route('/', queueRoutes({ queue, db: database.db, authRequired })) */
export function queueRoutes({ queue, db, authRequired }: QueueDeps): Hono {
  const app = new Hono()
  app.get('/api/queue', async (c) => {
    const now = Date.now()
    const [[counts, oldestInQueue], [rows, oldestRow]] = await Promise.all([
      onBackend('Redis', () => Promise.all([queue.getJobCounts(...QUEUE_STATES), oldestWaitingAt(queue)])),
      onBackend('Postgres', () =>
        Promise.all([
          rowCounts(db, authRequired ? (c.get('owner') ?? '') : undefined, now),
          oldestQueuedRowAt(db),
        ]),
      ),
    ])
    const times = [oldestInQueue, oldestRow].filter((t) => t !== null)
    const oldest = times.length > 0 ? Math.min(...times) : null
    const body: QueueBody = {
      byState: Object.fromEntries(QUEUE_STATES.map((s) => [s, counts[s] ?? 0])) as QueueBody['byState'],
      ...rows,
      oldestWaitingSec: oldest === null ? null : Math.max(0, (now - oldest) / 1000),
    }
    return c.json(body)
  })
  return app
}
