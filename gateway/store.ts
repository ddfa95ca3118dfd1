import { and, asc, count, desc, eq, inArray, lt, notInArray, or, type SQL, sql } from 'drizzle-orm'
import type { JobError, JobStatus } from '../schema/common.ts'
import { TERMINAL_STATUSES } from '../schema/common.ts'
import type { Db } from '../schema/db/connect.ts'
import { recordJobEvent } from '../schema/db/events.ts'
import {
  type JobArtifactRow,
  type JobAttemptRow,
  type JobRow,
  jobArtifacts,
  jobAttempts,
  jobs,
} from '../schema/db/tables.ts'
import type { ProgressEvent } from '../schema/events.ts'
import type { JobType } from '../schema/params/index.ts'
import { onBackend } from './errors.ts'

export interface NewJob {
  jobId: string
  type: JobType
  params: Record<string, unknown>
  owner: string | null
  priority: number | undefined
  timeoutSec: number | undefined
  maxAttempts: number
  outputPrefix: string
}

/** The columns of a list entry: not params nor result, which can be large. */
const summaryColumns = {
  id: jobs.id,
  type: jobs.type,
  status: jobs.status,
  progress: jobs.progress,
  message: jobs.message,
  attempt: jobs.attempt,
  maxAttempts: jobs.maxAttempts,
  error: jobs.error,
  owner: jobs.owner,
  lastSeq: jobs.lastSeq,
  createdAt: jobs.createdAt,
  startedAt: jobs.startedAt,
  finishedAt: jobs.finishedAt,
  updatedAt: jobs.updatedAt,
  nextAttemptAt: jobs.nextAttemptAt,
}
export type JobSummaryRow = Pick<JobRow, keyof typeof summaryColumns>

/** Statuses that count against a token's MAX_QUEUED_JOBS_PER_TOKEN. */
const UNFINISHED: JobStatus[] = ['queued', 'running', 'retrying']

/** The error of a row kept as a tombstone for a submit whose add to Redis had an unknown outcome. */
export const NOT_QUEUED: JobError = {
  code: 'NOT_QUEUED',
  reason: 'cancelled',
  message: 'not queued: Redis was unavailable during the submit',
}
export const isNotQueued = (row: Pick<JobRow, 'status' | 'error'>): boolean =>
  row.status === 'cancelled' && row.error?.code === NOT_QUEUED.code

/** A list cursor: the (createdAt, id) of the last row of the previous page, opaque to clients. */
const encodeCursor = (row: Pick<JobRow, 'createdAt' | 'id'>): string =>
  Buffer.from(JSON.stringify([row.createdAt.toISOString(), row.id])).toString('base64url')
const decodeCursor = (cursor: string): [Date, string] | null => {
  try {
    const [at, id] = JSON.parse(Buffer.from(cursor, 'base64url').toString()) as [string, string]
    const date = new Date(at)
    return Number.isNaN(date.getTime()) || typeof id !== 'string' ? null : [date, id]
  } catch {
    return null
  }
}

/** The gateway's reads and writes of job state; a Postgres connection failure is a 503 naming Postgres. */
export class JobStore {
  constructor(private readonly db: Db) {}

  private pg<T>(fn: () => Promise<T>): Promise<T> {
    return onBackend('Postgres', fn)
  }

  /**
   * Inserts a queued job unless the id exists (idempotent submit: the existing row) or the owner has
   * `maxUnfinished` unfinished jobs already. Serialised per owner (an advisory lock), so concurrent
   * submits cannot overshoot the quota.
   */
  claim(
    job: NewJob,
    maxUnfinished: number,
  ): Promise<{ row: JobRow } | { existing: JobRow } | { overQuota: true }> {
    return this.pg(() =>
      this.db.transaction(async (tx) => {
        await tx.execute(sql`select pg_advisory_xact_lock(hashtext(${`gpu-jobs-owner:${job.owner ?? ''}`}))`)
        const [existing] = await tx.select().from(jobs).where(eq(jobs.id, job.jobId))
        if (existing) return { existing }
        const [unfinished] = await tx
          .select({ n: count() })
          .from(jobs)
          .where(
            and(
              inArray(jobs.status, UNFINISHED),
              job.owner === null ? sql`${jobs.owner} is null` : eq(jobs.owner, job.owner),
            ),
          )
        if ((unfinished?.n ?? 0) >= maxUnfinished) return { overQuota: true as const }
        const [row] = await tx
          .insert(jobs)
          .values({
            id: job.jobId,
            type: job.type,
            status: 'queued',
            params: job.params,
            owner: job.owner,
            priority: job.priority ?? null,
            timeoutSec: job.timeoutSec ?? null,
            maxAttempts: job.maxAttempts,
            outputPrefix: job.outputPrefix,
          })
          .onConflictDoNothing()
          .returning()
        if (row) return { row }
        const [raced] = await tx.select().from(jobs).where(eq(jobs.id, job.jobId))
        if (!raced) throw new Error(`job ${job.jobId} neither inserted nor found`)
        return { existing: raced }
      }),
    )
  }

  /** Inserts a queued job; null when the id exists already. */
  async insert(job: NewJob): Promise<JobRow | null> {
    const claimed = await this.claim(job, Number.POSITIVE_INFINITY)
    return 'row' in claimed ? claimed.row : null
  }

  /** Keeps a published event in the SQL history (see schema/db/events.ts). */
  recordEvent(event: ProgressEvent): Promise<void> {
    return this.pg(() => recordJobEvent(this.db, event))
  }

  /** Removes a job that was never queued (its add was refused). */
  remove(jobId: string): Promise<void> {
    return this.pg(async () => {
      await this.db.delete(jobs).where(and(eq(jobs.id, jobId), eq(jobs.status, 'queued')))
    })
  }

  /** Removes a NOT_QUEUED tombstone, once Redis is known to hold nothing of it. */
  removeNotQueued(jobId: string): Promise<void> {
    return this.pg(async () => {
      await this.db
        .delete(jobs)
        .where(
          and(
            eq(jobs.id, jobId),
            eq(jobs.status, 'cancelled'),
            sql`${jobs.error}->>'code' = ${NOT_QUEUED.code}`,
          ),
        )
    })
  }

  get(jobId: string): Promise<JobRow | undefined> {
    return this.pg(async () => (await this.db.select().from(jobs).where(eq(jobs.id, jobId)))[0])
  }

  artifacts(jobId: string): Promise<JobArtifactRow[]> {
    return this.pg(() =>
      this.db
        .select()
        .from(jobArtifacts)
        .where(eq(jobArtifacts.jobId, jobId))
        .orderBy(asc(jobArtifacts.path)),
    )
  }

  attempts(jobId: string): Promise<JobAttemptRow[]> {
    return this.pg(() =>
      this.db
        .select()
        .from(jobAttempts)
        .where(eq(jobAttempts.jobId, jobId))
        .orderBy(asc(jobAttempts.attempt)),
    )
  }

  /** A page of summaries, newest first. */
  list(opts: {
    owner?: string | null | undefined
    status?: JobStatus | undefined
    type?: JobType | undefined
    limit: number
    cursor?: string | undefined
  }): Promise<{ rows: JobSummaryRow[]; nextCursor: string | null } | { badCursor: true }> {
    const where: SQL[] = []
    if (opts.owner !== undefined)
      where.push(opts.owner === null ? sql`${jobs.owner} is null` : eq(jobs.owner, opts.owner))
    if (opts.status) where.push(eq(jobs.status, opts.status))
    if (opts.type) where.push(eq(jobs.type, opts.type))
    if (opts.cursor) {
      const c = decodeCursor(opts.cursor)
      if (!c) return Promise.resolve({ badCursor: true as const })
      const [at, id] = c
      where.push(or(lt(jobs.createdAt, at), and(eq(jobs.createdAt, at), lt(jobs.id, id))) as SQL)
    }
    return this.pg(async () => {
      const rows = await this.db
        .select(summaryColumns)
        .from(jobs)
        .where(where.length ? and(...where) : undefined)
        .orderBy(desc(jobs.createdAt), desc(jobs.id))
        .limit(opts.limit + 1)
      const page = rows.slice(0, opts.limit)
      const last = page.at(-1)
      return { rows: page, nextCursor: rows.length > opts.limit && last ? encodeCursor(last) : null }
    })
  }

  /** Marks a job cancelled unless it is terminal already; returns whether this call did it. */
  cancel(jobId: string, error: JobError, progressMessage: string): Promise<boolean> {
    return this.pg(async () => {
      const now = new Date()
      const rows = await this.db
        .update(jobs)
        .set({
          status: 'cancelled',
          error,
          message: progressMessage,
          finishedAt: now,
          updatedAt: now,
          nextAttemptAt: null,
        })
        .where(and(eq(jobs.id, jobId), notInArray(jobs.status, [...TERMINAL_STATUSES])))
        .returning({ id: jobs.id })
      return rows.length > 0
    })
  }
}
