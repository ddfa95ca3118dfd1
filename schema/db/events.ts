import { asc, eq, sql } from 'drizzle-orm'
import type { ProgressEvent } from '../events.ts'
import type { Db } from './connect.ts'
import { jobEvents, jobMetrics, jobs } from './tables.ts'

/**
 * Keeps published events in their jobs' SQL history (`job_events`, once per seq) and moves each row's
 * `last_seq` forward, in one statement whatever the number of events. The one writer of `job_events`: the
 * GPU host (every status change) and the gateway (the `queued` events, cancellations) both use it, so the
 * history holds every event that was published.
 */
export async function recordJobEvents(db: Db, events: ProgressEvent[]): Promise<void> {
  if (events.length === 0) return
  const insert = db
    .insert(jobEvents)
    .values(
      events.map((event) => ({
        jobId: event.jobId,
        seq: event.seq,
        status: event.status,
        progress: event.progress,
        message: event.message,
        attempt: event.attempt,
        at: new Date(event.timestamp),
      })),
    )
    .onConflictDoNothing()
  // The highest seq per job: one row of `values` per job, as `update ... from` takes one match per row.
  const top = new Map<string, number>()
  for (const e of events) top.set(e.jobId, Math.max(top.get(e.jobId) ?? 0, e.seq))
  const seqs = sql.join(
    [...top].map(([jobId, seq]) => sql`(${jobId}, ${seq}::integer)`),
    sql`, `,
  )
  await db.execute(
    sql`with recorded as ${insert} update ${jobs} set ${sql.identifier(jobs.lastSeq.name)} = greatest(${jobs.lastSeq}, v.seq) from (values ${seqs}) as v(id, seq) where ${jobs.id} = v.id`,
  )
}

/** One progress event's metrics, as `job_metrics` keeps them. */
export interface MetricPoint {
  jobId: string
  seq: number
  attempt: number
  progress: number
  metrics: Record<string, number>
  at: Date
}

/** Keeps a batch of metric points (once per seq: a retried write adds nothing twice). */
export async function recordMetricPoints(db: Db, points: MetricPoint[]): Promise<void> {
  if (points.length === 0) return
  await db.insert(jobMetrics).values(points).onConflictDoNothing()
}

/** The most metric points one read returns: a curve of a long training, and bounded for the browser. */
export const MAX_METRIC_POINTS = 20_000

/** A job's metric points in seq order (its attempts one after another), at most MAX_METRIC_POINTS. */
export async function readMetricPoints(db: Db, jobId: string): Promise<MetricPoint[]> {
  return db
    .select()
    .from(jobMetrics)
    .where(eq(jobMetrics.jobId, jobId))
    .orderBy(asc(jobMetrics.seq))
    .limit(MAX_METRIC_POINTS)
}
