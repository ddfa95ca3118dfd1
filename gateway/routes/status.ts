/**
 * How a job is shown: the status body (`GET /api/status/:jobId`, alias `GET /api/jobs/:jobId`) with its
 * cache, and the list entry of `GET /api/jobs`.
 */
import { type Context, Hono } from 'hono'
import type { Redis } from 'ioredis'
import type { JobAttempt, JobStatusBody, JobSummary } from '../../schema/api.ts'
import { isTerminal } from '../../schema/common.ts'
import type { JobAttemptRow, JobRow } from '../../schema/db/tables.ts'
import { TYPE_DEFAULTS } from '../../schema/params/index.ts'
import { lastEvent } from '../../schema/progress-log.ts'
import type { EventHub } from '../hub.ts'
import type { JobStore, JobSummaryRow } from '../store.ts'
import { type JobAccess, noSuchJob } from './access.ts'
import { toArtifact } from './artifacts.ts'

/** Longest a cached status body is served when no event of its job arrives (see `StatusBodies.cached`). */
const STATUS_CACHE_MS = 1000

const iso = (d: Date | null | undefined): string | null => (d ? d.toISOString() : null)

/** A row as a list entry: no params nor result, which can be large. */
export const summaryOf = (row: JobSummaryRow): JobSummary => ({
  jobId: row.id,
  type: row.type,
  status: row.status,
  progress: row.progress,
  message: row.message,
  attempt: row.attempt,
  maxAttempts: row.maxAttempts,
  error: row.error ?? null,
  createdAt: row.createdAt.toISOString(),
  startedAt: iso(row.startedAt),
  finishedAt: iso(row.finishedAt),
  updatedAt: row.updatedAt.toISOString(),
  nextAttemptAt: iso(row.nextAttemptAt),
  seq: row.lastSeq,
})

/** An attempt row as the status body shows it; an attempt the job retried after shows as `failed`. */
export const attemptOf = (row: JobAttemptRow): JobAttempt => ({
  attempt: row.attempt,
  hostId: row.host,
  pid: row.pid ?? null,
  startedAt: iso(row.startedAt),
  finishedAt: iso(row.finishedAt),
  outcome: row.outcome === 'retrying' ? 'failed' : (row.outcome ?? null),
  reason: row.reason ?? null,
  message: row.message ?? null,
})

export interface StatusBodies {
  /** The stored row merged with the newest live event, which Postgres sees only a few times a second. */
  body(row: JobRow): Promise<JobStatusBody>
  /** The row and body of `jobId`, shared by concurrent requests (null: no such job). */
  cached(jobId: string): Promise<{ row: JobRow; body: JobStatusBody } | null>
  /** Drops the cached body of `jobId` (its state changed here). */
  forget(jobId: string): void
}

/**
 * Status bodies, shared by concurrent requests and kept until the job's next event reaches this gateway
 * (or STATUS_CACHE_MS at most, in case an event is missed): pollers cost one Postgres and one Redis read
 * per job and event, not per request, and never see a state older than the last event seen here.
 */
export function statusBodies({
  store,
  redis,
  hub,
}: {
  store: JobStore
  redis: Redis
  hub: EventHub
}): StatusBodies {
  async function body(row: JobRow): Promise<JobStatusBody> {
    // Artifacts are recorded when a job completes: an unfinished job has none to look up. Attempt rows
    // change with an event of their job (started, ended), which drops the cached body; only the pid is
    // written without one, and shows within STATUS_CACHE_MS.
    const [live, artifacts, attempts] = await Promise.all([
      lastEvent(redis, row.id).catch(() => null),
      isTerminal(row.status) ? store.artifacts(row.id) : [],
      row.attempt > 0 ? store.attempts(row.id) : [],
    ])
    // The row is written before the job's terminal event (schema/jobs/apply.ts): a terminal event newer
    // than an unfinished row means the row was read just before it was written. Read it again, or the
    // body would say `completed` with no result, artifacts or finish time.
    if (live && isTerminal(live.status) && !isTerminal(row.status) && live.seq > row.lastSeq) {
      const written = await store.get(row.id).catch(() => undefined)
      if (written && isTerminal(written.status)) return body(written)
    }
    // A finished row is final; its last event may be published a moment after the row is written.
    const fresher = live && live.seq > row.lastSeq && !isTerminal(row.status) ? live : null
    const finalSeq =
      live && isTerminal(row.status) && live.status === row.status
        ? Math.max(live.seq, row.lastSeq)
        : row.lastSeq
    return {
      jobId: row.id,
      type: row.type,
      status: fresher?.status ?? row.status,
      progress: fresher?.progress ?? row.progress,
      message: fresher?.message ?? row.message,
      attempt: fresher?.attempt ?? row.attempt,
      maxAttempts: row.maxAttempts,
      params: row.params,
      result: row.result ?? null,
      error: row.error ?? null,
      artifacts: artifacts.map(toArtifact),
      createdAt: row.createdAt.toISOString(),
      startedAt: iso(row.startedAt),
      finishedAt: iso(row.finishedAt),
      updatedAt: row.updatedAt.toISOString(),
      nextAttemptAt: iso(row.nextAttemptAt),
      seq: fresher?.seq ?? finalSeq,
      attempts: attempts.map(attemptOf),
      priority: row.priority ?? null,
      timeoutSec: row.timeoutSec ?? TYPE_DEFAULTS[row.type].timeoutSec,
      gpu: row.gpu ?? null,
      optionDefaults: {
        timeoutSec: TYPE_DEFAULTS[row.type].timeoutSec,
        maxAttempts: TYPE_DEFAULTS[row.type].maxAttempts,
      },
    }
  }

  const cache = new Map<string, { at: number; entry: Promise<{ row: JobRow; body: JobStatusBody } | null> }>()
  hub.onEvent((event) => cache.delete(event.jobId))
  const cached = (jobId: string) => {
    const now = Date.now()
    const hit = cache.get(jobId)
    if (hit && now - hit.at < STATUS_CACHE_MS) return hit.entry
    const entry = store.get(jobId).then(async (row) => (row ? { row, body: await body(row) } : null))
    cache.set(jobId, { at: now, entry })
    if (cache.size > 10_000) for (const [id, e] of cache) if (now - e.at >= STATUS_CACHE_MS) cache.delete(id)
    entry.catch(() => cache.delete(jobId))
    return entry
  }
  return { body, cached, forget: (jobId) => void cache.delete(jobId) }
}

/** @example app.route('/', statusRoutes({ bodies, access })) */
export function statusRoutes({ bodies, access }: { bodies: StatusBodies; access: JobAccess }): Hono {
  const app = new Hono()
  const handler = async (c: Context) => {
    const jobId = c.req.param('jobId') ?? ''
    access.checkId(jobId)
    const found = await bodies.cached(jobId)
    if (found && access.canSee(found.row, c.get('owner'))) return c.json(found.body)
    // Not a whole id the caller may see: perhaps the start of one (a short id).
    const row = await access.visibleJob(jobId, c.get('owner'))
    const named = await bodies.cached(row.id)
    if (!named) throw noSuchJob(jobId)
    return c.json(named.body)
  }
  app.get('/api/status/:jobId', handler)
  app.get('/api/jobs/:jobId', handler)
  return app
}
