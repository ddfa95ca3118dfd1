import { and, asc, desc, eq, lt, notInArray, or, type SQL, sql } from 'drizzle-orm'
import type { JobError, JobStatus } from '../schema/common.ts'
import { TERMINAL_STATUSES } from '../schema/common.ts'
import type { Db } from '../schema/db/connect.ts'
import {
  type JobArtifactRow,
  type JobAttemptRow,
  type JobRow,
  jobArtifacts,
  jobAttempts,
  jobs,
} from '../schema/db/tables.ts'
import type { JobType } from '../schema/params/index.ts'

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

/** A list cursor: the (createdAt, id) of the last row of the previous page, opaque to clients. */
const encodeCursor = (row: JobRow): string =>
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

/** The gateway's reads and writes of job state. */
export class JobStore {
  constructor(private readonly db: Db) {}

  /** Inserts a queued job; returns null when the id exists already (idempotent submit). */
  async insert(job: NewJob): Promise<JobRow | null> {
    const [row] = await this.db
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
    return row ?? null
  }

  /** Records the seq of the job's queued event, so a snapshot never goes back before it. */
  async progressSeq(jobId: string, seq: number): Promise<void> {
    await this.db
      .update(jobs)
      .set({ lastSeq: sql`greatest(${jobs.lastSeq}, ${seq})` })
      .where(eq(jobs.id, jobId))
  }

  async remove(jobId: string): Promise<void> {
    await this.db.delete(jobs).where(and(eq(jobs.id, jobId), eq(jobs.status, 'queued')))
  }

  async get(jobId: string): Promise<JobRow | undefined> {
    return (await this.db.select().from(jobs).where(eq(jobs.id, jobId)))[0]
  }

  async artifacts(jobId: string): Promise<JobArtifactRow[]> {
    return this.db
      .select()
      .from(jobArtifacts)
      .where(eq(jobArtifacts.jobId, jobId))
      .orderBy(asc(jobArtifacts.path))
  }

  async attempts(jobId: string): Promise<JobAttemptRow[]> {
    return this.db
      .select()
      .from(jobAttempts)
      .where(eq(jobAttempts.jobId, jobId))
      .orderBy(asc(jobAttempts.attempt))
  }

  async list(opts: {
    owner?: string | null | undefined
    status?: JobStatus | undefined
    type?: JobType | undefined
    limit: number
    cursor?: string | undefined
  }): Promise<{ rows: JobRow[]; nextCursor: string | null } | { badCursor: true }> {
    const where: SQL[] = []
    if (opts.owner !== undefined)
      where.push(opts.owner === null ? sql`${jobs.owner} is null` : eq(jobs.owner, opts.owner))
    if (opts.status) where.push(eq(jobs.status, opts.status))
    if (opts.type) where.push(eq(jobs.type, opts.type))
    if (opts.cursor) {
      const c = decodeCursor(opts.cursor)
      if (!c) return { badCursor: true }
      const [at, id] = c
      where.push(or(lt(jobs.createdAt, at), and(eq(jobs.createdAt, at), lt(jobs.id, id))) as SQL)
    }
    const rows = await this.db
      .select()
      .from(jobs)
      .where(where.length ? and(...where) : undefined)
      .orderBy(desc(jobs.createdAt), desc(jobs.id))
      .limit(opts.limit + 1)
    const page = rows.slice(0, opts.limit)
    const last = page.at(-1)
    return { rows: page, nextCursor: rows.length > opts.limit && last ? encodeCursor(last) : null }
  }

  /** Marks a job cancelled unless it is terminal already; returns whether this call did it. */
  async cancel(jobId: string, error: JobError, progressMessage: string): Promise<boolean> {
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
  }
}
