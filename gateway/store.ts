import { and, asc, desc, eq, ilike, inArray, like, lt, or, type SQL, sql } from 'drizzle-orm'
import type { JobError, JobStatus } from '../schema/common.ts'
import type { Db } from '../schema/db/connect.ts'
import {
  type JobArtifactRow,
  type JobAttemptRow,
  type JobRow,
  jobArtifacts,
  jobAttempts,
  jobs,
} from '../schema/db/tables.ts'
import type { ProgressEvent } from '../schema/events.ts'
import { NotQueuedError } from '../schema/jobs/errors.ts'
import { type Claim, JobRecords, type NewJob } from '../schema/jobs/records.ts'
import type { JobType } from '../schema/params/index.ts'
import { onBackend } from './errors.ts'

export type { NewJob }

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

/** `text` matched as itself in a LIKE pattern (backslash is LIKE's default escape character). */
const likeLiteral = (text: string): string => text.replace(/[\\%_]/g, '\\$&')

/** The jobs of `owner`; null: those submitted without a token. */
const ownedBy = (owner: string | null): SQL =>
  owner === null ? sql`${jobs.owner} is null` : eq(jobs.owner, owner)

/** The error of a row kept as a tombstone for a submit whose add to Redis had an unknown outcome. */
export const NOT_QUEUED: JobError = new NotQueuedError().toJobError()

/**
 * A list cursor: the (createdAt, id) of the last row of the previous page, opaque to clients. createdAt
 * as Postgres writes it, to the microsecond: a JavaScript Date keeps milliseconds, and rows created in
 * the same millisecond as a page's last (a batch submit's are) would fall between two pages.
 */
const encodeCursor = (createdAt: string, id: string): string =>
  Buffer.from(JSON.stringify([createdAt, id])).toString('base64url')
/** A timestamp as Postgres prints one (or an ISO one, as older cursors hold). */
const TIMESTAMP = /^\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2}(\.\d{1,6})?(Z|[+-]\d{2}(:?\d{2})?)?$/
const decodeCursor = (cursor: string): [string, string] | null => {
  try {
    const [at, id] = JSON.parse(Buffer.from(cursor, 'base64url').toString()) as [unknown, unknown]
    return typeof at === 'string' && TIMESTAMP.test(at) && typeof id === 'string' ? [at, id] : null
  } catch {
    return null
  }
}

/**
 * The gateway's reads and writes of job state; a Postgres connection failure is a 503 naming Postgres.
 * The writes are the shared writer's (schema/jobs/records.ts), so gateway and hosts guard rows alike.
 */
export class JobStore {
  private readonly records: JobRecords

  constructor(private readonly db: Db) {
    this.records = new JobRecords(db, { call: (_what, fn) => onBackend('Postgres', fn) })
  }

  private pg<T>(fn: () => Promise<T>): Promise<T> {
    return onBackend('Postgres', fn)
  }

  /** Claims the rows of jobs submitted together, all or none (see JobRecords.claimMany). */
  claimMany(batch: NewJob[], maxUnfinished: number, opts?: { undoNotQueued?: boolean }): Promise<Claim> {
    return this.records.claimMany(batch, maxUnfinished, opts)
  }

  /** Inserts a queued job; null when the id exists already. */
  async insert(job: NewJob): Promise<JobRow | null> {
    const claimed = await this.claimMany([job], Number.POSITIVE_INFINITY, { undoNotQueued: false })
    const [only] = 'rows' in claimed ? claimed.rows : []
    return only?.created ? only.row : null
  }

  /** The owners of those of `jobIds` that exist (one read for a whole batch). */
  ownersOf(jobIds: string[]): Promise<Map<string, string | null>> {
    return this.pg(async () => {
      const rows = await this.db
        .select({ id: jobs.id, owner: jobs.owner })
        .from(jobs)
        .where(inArray(jobs.id, jobIds))
      return new Map(rows.map((r) => [r.id, r.owner]))
    })
  }

  /** Keeps a published event in the SQL history (see schema/db/events.ts). */
  recordEvent(event: ProgressEvent): Promise<void> {
    return this.records.recordEvent(event)
  }

  /** Keeps published events in the SQL history, in one statement. */
  recordEvents(events: ProgressEvent[]): Promise<void> {
    return this.records.recordEvents(events)
  }

  /** Removes jobs that were never queued (their add was refused). */
  remove(jobIds: string[]): Promise<void> {
    return this.records.remove(jobIds)
  }

  /** Removes a NOT_QUEUED tombstone, once Redis is known to hold nothing of it. */
  removeNotQueued(jobId: string): Promise<void> {
    return this.records.removeNotQueued(jobId)
  }

  get(jobId: string): Promise<JobRow | undefined> {
    return this.pg(async () => (await this.db.select().from(jobs).where(eq(jobs.id, jobId)))[0])
  }

  /**
   * Up to `limit` jobs whose id starts with `start` (case as typed, `%`, `_` and `\\` literal), of `owner`
   * when it is given (null: the jobs of no token). Newest first.
   */
  startingWith(start: string, owner: string | null | undefined, limit: number): Promise<JobRow[]> {
    const where: SQL[] = [like(jobs.id, `${likeLiteral(start)}%`)]
    if (owner !== undefined) where.push(ownedBy(owner))
    return this.pg(() =>
      this.db
        .select()
        .from(jobs)
        .where(and(...where))
        .orderBy(desc(jobs.createdAt), desc(jobs.id))
        .limit(limit),
    )
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

  /** The job's attempt rows, first attempt first. */
  attempts(jobId: string): Promise<JobAttemptRow[]> {
    return this.pg(() =>
      this.db
        .select()
        .from(jobAttempts)
        .where(eq(jobAttempts.jobId, jobId))
        .orderBy(asc(jobAttempts.attempt)),
    )
  }

  /**
   * Makes a retrying job's next attempt due now (see JobRecords.retryNow): the row when written, null
   * when the job is no longer retrying.
   */
  retryNow(jobId: string, attempt: number): Promise<JobRow | null> {
    return this.records.retryNow(jobId, attempt)
  }

  /**
   * A page of summaries, newest first. `q` searches: jobs whose id starts with it (case as typed: ids are
   * case-sensitive) or whose message contains it (any case); `%`, `_` and `\` in it are literal.
   */
  list(opts: {
    owner?: string | null | undefined
    status?: JobStatus | undefined
    type?: JobType | undefined
    limit: number
    cursor?: string | undefined
    q?: string | undefined
  }): Promise<{ rows: JobSummaryRow[]; nextCursor: string | null } | { badCursor: true }> {
    const where: SQL[] = []
    if (opts.owner !== undefined) where.push(ownedBy(opts.owner))
    if (opts.status) where.push(eq(jobs.status, opts.status))
    if (opts.type) where.push(eq(jobs.type, opts.type))
    if (opts.q) {
      const literal = likeLiteral(opts.q)
      where.push(or(like(jobs.id, `${literal}%`), ilike(jobs.message, `%${literal}%`)) as SQL)
    }
    if (opts.cursor) {
      const c = decodeCursor(opts.cursor)
      if (!c) return Promise.resolve({ badCursor: true as const })
      const [at, id] = c
      const after = sql`${at}::timestamptz`
      where.push(
        or(sql`${jobs.createdAt} < ${after}`, and(sql`${jobs.createdAt} = ${after}`, lt(jobs.id, id))) as SQL,
      )
    }
    return this.pg(async () => {
      const rows = await this.db
        .select({ ...summaryColumns, cursorAt: sql<string>`${jobs.createdAt}::text` })
        .from(jobs)
        .where(where.length ? and(...where) : undefined)
        .orderBy(desc(jobs.createdAt), desc(jobs.id))
        .limit(opts.limit + 1)
      const page = rows.slice(0, opts.limit)
      const last = page.at(-1)
      return {
        rows: page.map(({ cursorAt: _, ...row }) => row),
        nextCursor: rows.length > opts.limit && last ? encodeCursor(last.cursorAt, last.id) : null,
      }
    })
  }

  /** Marks a job cancelled unless it is terminal already; returns whether this call did it. */
  cancel(jobId: string, error: JobError, progressMessage: string): Promise<boolean> {
    return this.records.cancel(jobId, error, progressMessage)
  }
}
