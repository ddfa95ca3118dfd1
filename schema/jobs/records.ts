/**
 * The one writer of job rows, for the gateway and the GPU hosts alike. Every write is guarded (`guard()` of
 * guard.ts, the SQL form of `mayWrite` in lifecycle.ts): a host that lost its job (stalled, then taken by another
 * host) cannot overwrite the newer attempt's state, and the terminal state is written once. How a call
 * meets an unreachable Postgres is the caller's: the host retries (`retryWhileDown`, db-call.ts), the gateway fails
 * fast with a 503.
 */
import { and, asc, count, eq, gt, inArray, lt, sql } from 'drizzle-orm'
import type { PgUpdateSetSource } from 'drizzle-orm/pg-core'
import type { JobError, JobStatus } from '../common.ts'
import { TERMINAL_STATUSES } from '../common.ts'
import type { Db } from '../db/connect.ts'
import { recordJobEvents } from '../db/events.ts'
import { type JobRow, jobArtifacts, jobAttempts, jobs } from '../db/tables.ts'
import type { ProgressEvent } from '../events.ts'
import type { DbCall } from './db-call.ts'
import { NotQueuedError } from './errors.ts'
import { guard, olderThan, unfinished } from './guard.ts'
import type { ArtifactEntry, RowWrite, WrittenStatus } from './lifecycle.ts'
import { type AttemptClose, closeOpenAttempts, type NewJob, rowOf, sameJob, writeJob } from './row-writes.ts'

export type { NewJob }

/** How an attempt ends (a Transition of lifecycle.ts is one). */
export interface AttemptEnd {
  status: Exclude<JobStatus, 'running'>
  progress: number
  message: string
  result?: unknown
  error?: JobError | null | undefined
  artifacts?: ArtifactEntry[] | undefined
  nextAttemptAt?: Date | null | undefined
}

const UNFINISHED: JobStatus[] = ['queued', 'running', 'retrying']

/** Whether a row is the tombstone of a submit whose add to Redis had an unknown outcome. */
export const isNotQueued = (row: Pick<JobRow, 'status' | 'error'>): boolean =>
  row.status === 'cancelled' && row.error?.code === NotQueuedError.CODE

/** What `claimMany` found: the rows (in the jobs' order), or why it wrote none. */
export type Claim =
  | { rows: { row: JobRow; created: boolean }[] }
  | { conflict: number }
  | { overQuota: true }
  | { notQueued: string[] }

/** A claim refused after its inserts, thrown inside the transaction so that they are taken back. */
class ClaimRefused extends Error {
  override name = 'ClaimRefused'
  constructor(readonly claim: Claim) {
    super('claim refused')
  }
}

/** The row writes of the job lifecycle, and the reads that choose what the reconciler writes. */
export class JobRecords {
  // Protected: a side's own writes beside the rows (the host's metrics and logs) go through the same call.
  protected readonly call: DbCall
  private readonly host: string

  /** `host` names the writer in attempt rows; `call` wraps every database call (default: as is). */
  constructor(
    protected readonly db: Db,
    opts: { host?: string; call?: DbCall } = {},
  ) {
    this.host = opts.host ?? 'unknown'
    this.call = opts.call ?? ((_what, fn) => fn())
  }

  /** Whether a row write `write` would change job `jobId` now (the guard alone, for tests and checks). */
  async mayWrite(jobId: string, write: RowWrite): Promise<boolean> {
    const rows = await this.call('guard', () =>
      this.db
        .select({ id: jobs.id })
        .from(jobs)
        .where(and(eq(jobs.id, jobId), guard(write))),
    )
    return rows.length > 0
  }

  /**
   * Claims the rows of jobs submitted together by one owner, all or none, in one transaction serialised
   * per owner (an advisory lock, so concurrent submits cannot overshoot the quota): one read of the ids
   * that exist, one count of the owner's unfinished jobs, one multi-row insert of the new ones. In the
   * jobs' order, the first one that cannot be claimed decides: `conflict` (its id holds a different
   * request, or another owner's job) or `overQuota` (the owner would hold more than `maxUnfinished`
   * unfinished jobs); nothing is written then. A job whose row is the same request is kept as it is
   * (`created: false`). With `undoNotQueued` (the default), NOT_QUEUED tombstones of this owner among the
   * ids are reported first (`notQueued`, nothing written): the caller undoes them and claims again.
   *
   * @example const claim = await records.claimMany([job], 100)
   */
  claimMany(batch: NewJob[], maxUnfinished: number, { undoNotQueued = true } = {}): Promise<Claim> {
    const owner = batch[0]?.owner ?? null
    if (batch.some((j) => (j.owner ?? null) !== owner)) throw new Error('a claim is for one owner')
    const ids = batch.map((j) => j.jobId)
    const claim = () =>
      this.db.transaction(async (tx): Promise<Claim> => {
        // Sent together: each statement takes its snapshot when it runs, after the lock is held, so the
        // reads see every claim made before. Prepared (`prepare`): postgres.js sends an unprepared query
        // with parameters as describe-then-execute, two round trips that nothing can be pipelined behind;
        // a prepared one, once its connection knows it, is one round trip, pipelined with the others.
        const [, found, counted] = await Promise.all([
          tx
            .select({
              locked: sql`pg_advisory_xact_lock(hashtext(${`gpu-jobs-owner:${owner ?? ''}`}))::text`,
            })
            .from(sql`(values (1)) as one(x)`)
            .prepare('claim_lock')
            .execute(),
          tx.select().from(jobs).where(inArray(jobs.id, ids)).prepare('claim_found').execute(),
          tx
            .select({ n: count() })
            .from(jobs)
            .where(
              and(
                inArray(jobs.status, UNFINISHED),
                owner === null ? sql`${jobs.owner} is null` : eq(jobs.owner, owner),
              ),
            )
            .prepare('claim_count')
            .execute(),
        ])
        const stored = new Map(found.map((r) => [r.id, r]))
        if (undoNotQueued) {
          const notQueued = found.filter((r) => isNotQueued(r) && r.owner === owner).map((r) => r.id)
          if (notQueued.length > 0) return { notQueued }
        }
        let unfinishedJobs = counted[0]?.n ?? 0
        const fresh: NewJob[] = []
        for (const [i, job] of batch.entries()) {
          const row = stored.get(job.jobId)
          if (row) {
            if (!sameJob(row, job)) return { conflict: i }
          } else {
            if (unfinishedJobs >= maxUnfinished) return { overQuota: true }
            unfinishedJobs++
            fresh.push(job)
          }
        }
        const inserted =
          fresh.length === 0
            ? []
            : await tx
                .insert(jobs)
                .values(fresh.map(rowOf))
                .onConflictDoNothing()
                .returning()
                .prepare('claim_insert')
                .execute()
        const created = new Set(inserted.map((r) => r.id))
        for (const r of inserted) stored.set(r.id, r)
        // Inserted meanwhile without this lock (a host's row of a job another producer added).
        const raced = fresh.filter((j) => !created.has(j.jobId)).map((j) => j.jobId)
        if (raced.length > 0)
          for (const r of await tx.select().from(jobs).where(inArray(jobs.id, raced))) stored.set(r.id, r)
        const rows = batch.map((job, i) => {
          const row = stored.get(job.jobId)
          if (!row) throw new Error(`job ${job.jobId} neither inserted nor found`)
          // Thrown, so the transaction takes back this batch's inserts.
          if (!created.has(row.id) && !sameJob(row, job)) throw new ClaimRefused({ conflict: i })
          return { row, created: created.has(row.id) }
        })
        return { rows }
      })
    return this.call('claim jobs', () =>
      claim().catch((err: unknown) => {
        if (err instanceof ClaimRefused) return err.claim
        throw err
      }),
    )
  }

  /** Creates the row of a job added by another producer (the gateway creates its own). */
  ensureJob(job: NewJob): Promise<void> {
    return this.call('ensure job', async () => {
      await this.db.insert(jobs).values(rowOf(job)).onConflictDoNothing()
    })
  }

  /** Removes jobs that were never queued (their add was refused). */
  remove(jobIds: string[]): Promise<void> {
    return this.call('remove jobs', async () => {
      await this.db.delete(jobs).where(and(inArray(jobs.id, jobIds), eq(jobs.status, 'queued')))
    })
  }

  /** Removes a NOT_QUEUED tombstone, once Redis is known to hold nothing of it. */
  removeNotQueued(jobId: string): Promise<void> {
    return this.call('remove tombstone', async () => {
      await this.db
        .delete(jobs)
        .where(
          and(
            eq(jobs.id, jobId),
            eq(jobs.status, 'cancelled'),
            sql`${jobs.error}->>'code' = ${NotQueuedError.CODE}`,
          ),
        )
    })
  }

  /**
   * The message of a job put back in the queue without an attempt (no engine for it on the host that
   * took it); the row keeps its status (queued, or retrying between attempts). The row when the message
   * changed, null when it said so already or the job is no longer waiting (cancelled, running elsewhere).
   */
  noteWaiting(jobId: string, message: string): Promise<JobRow | null> {
    return this.call('waiting message', async () => {
      const [row] = await this.db
        .update(jobs)
        .set({ message, updatedAt: new Date() })
        .where(and(eq(jobs.id, jobId), guard({ kind: 'waiting' }), sql`${jobs.message} <> ${message}`))
        .returning()
      return row ?? null
    })
  }

  /**
   * How many of the job's attempts a host's shutdown interrupted (`interrupted`, reason `shutdown`): they
   * do not count against its maxAttempts.
   */
  shutdownInterruptions(jobId: string): Promise<number> {
    return this.call('count interrupted attempts', async () => {
      const [row] = await this.db
        .select({ n: count() })
        .from(jobAttempts)
        .where(
          and(
            eq(jobAttempts.jobId, jobId),
            eq(jobAttempts.outcome, 'interrupted'),
            eq(jobAttempts.reason, 'shutdown'),
          ),
        )
      return row?.n ?? 0
    })
  }

  /**
   * Starts the next attempt: status running, attempt + 1, an attempt row; an attempt left unfinished by a
   * host that died is closed as interrupted. Null when the job is already terminal (cancelled meanwhile).
   */
  startAttempt(jobId: string): Promise<JobRow | null> {
    return this.call('start attempt', () =>
      this.db.transaction(async (tx) => {
        const [row] = await tx
          .update(jobs)
          .set({
            status: 'running',
            attempt: sql`${jobs.attempt} + 1`,
            startedAt: sql`coalesce(${jobs.startedAt}, now())`,
            host: this.host,
            nextAttemptAt: null,
            updatedAt: new Date(),
          })
          .where(and(eq(jobs.id, jobId), guard({ kind: 'start' })))
          .returning()
        if (!row) return null
        await closeOpenAttempts(tx, jobId, {
          finishedAt: new Date(),
          outcome: 'interrupted',
          reason: 'crash',
          message: 'the host running this attempt stopped',
        })
        await tx
          .insert(jobAttempts)
          .values({ jobId, attempt: row.attempt, host: this.host })
          .onConflictDoUpdate({
            target: [jobAttempts.jobId, jobAttempts.attempt],
            set: {
              host: this.host,
              startedAt: new Date(),
              finishedAt: null,
              outcome: null,
              reason: null,
              message: null,
            },
          })
        return row
      }),
    )
  }

  setAttemptPid(jobId: string, attempt: number, pid: number): Promise<void> {
    return this.call('attempt pid', async () => {
      await this.db
        .update(jobAttempts)
        .set({ pid })
        .where(and(eq(jobAttempts.jobId, jobId), eq(jobAttempts.attempt, attempt)))
    })
  }

  /** Latest progress of a running attempt (throttled by the caller). */
  progress(jobId: string, attempt: number, event: ProgressEvent): Promise<void> {
    return this.call('progress', async () => {
      await this.db
        .update(jobs)
        .set({
          progress: event.progress,
          message: event.message,
          lastSeq: sql`greatest(${jobs.lastSeq}, ${event.seq})`,
          updatedAt: new Date(),
        })
        .where(and(eq(jobs.id, jobId), guard({ kind: 'progress', attempt })))
    })
  }

  /**
   * Ends an attempt (`queued`: interrupted and put back). Written only if the job is not terminal yet and
   * this is still its current attempt; returns whether this call wrote it. The caller publishes the event
   * afterwards, so a client that sees the event finds the row already in its final state.
   */
  finishAttempt(jobId: string, attempt: number, end: AttemptEnd): Promise<boolean> {
    const now = new Date()
    const row: PgUpdateSetSource<typeof jobs> = {
      status: end.status,
      progress: end.progress,
      message: end.message,
      result: end.result === undefined ? undefined : (end.result ?? null),
      // A completed job has no error: an earlier attempt's stays in that attempt's row, not the job's.
      error: end.status === 'completed' ? null : end.error === undefined ? undefined : end.error,
      finishedAt: TERMINAL_STATUSES.includes(end.status) ? now : null,
      nextAttemptAt: end.nextAttemptAt ?? null,
      updatedAt: now,
    }
    const close: AttemptClose = {
      finishedAt: now,
      outcome: end.status === 'queued' ? 'interrupted' : end.status,
      reason: end.error?.reason ?? null,
      message: end.error?.message ?? null,
    }
    return this.call('finish attempt', () =>
      this.db.transaction(async (tx) => {
        const written = await writeJob(tx, row, and(eq(jobs.id, jobId), guard({ kind: 'finish', attempt })))
        await closeOpenAttempts(tx, jobId, close, attempt)
        if (!written) return false
        if (end.artifacts) {
          await tx.delete(jobArtifacts).where(eq(jobArtifacts.jobId, jobId))
          if (end.artifacts.length > 0)
            await tx.insert(jobArtifacts).values(end.artifacts.map((a) => ({ jobId, ...a })))
        }
        return true
      }),
    )
  }

  /** Marks a job cancelled unless it is terminal already; returns whether this call did it. */
  cancel(jobId: string, error: JobError, message: string): Promise<boolean> {
    return this.call('cancel job', async () => {
      const now = new Date()
      return writeJob(
        this.db,
        { status: 'cancelled', error, message, finishedAt: now, updatedAt: now, nextAttemptAt: null },
        and(eq(jobs.id, jobId), guard({ kind: 'cancel' })),
      )
    })
  }

  /**
   * A client's "retry now" of a job waiting for its next attempt after attempt `attempt`: the attempt is
   * due now (`nextAttemptAt`; the reconciler re-adds a lost one without delay). Written only while the job
   * still waits after that attempt and its next one is not due yet, so of many at once one writes, and a
   * late one does not cut short the wait after a later attempt; returns the row, or null when it did not.
   */
  retryNow(jobId: string, attempt: number): Promise<JobRow | null> {
    return this.call('retry now', () =>
      this.db.transaction(async (tx) => {
        // The row locked first, and "now" read after: of retries at once, the later sees the due time the
        // earlier wrote as past.
        const [current] = await tx.select().from(jobs).where(eq(jobs.id, jobId)).for('update')
        const now = new Date()
        const waiting =
          current?.status === 'retrying' &&
          current.attempt === attempt &&
          (current.nextAttemptAt === null || current.nextAttemptAt > now)
        if (!waiting) return null
        const [row] = await tx
          .update(jobs)
          .set({ nextAttemptAt: now, updatedAt: now })
          .where(eq(jobs.id, jobId))
          .returning()
        return row ?? null
      }),
    )
  }

  /**
   * The reconciler's write for a job the queue lost: `queued` or `retrying` again (to be re-added), or
   * `failed` with reason `lost`. Guarded: only if the row still has the status and attempt it was read
   * with and nobody wrote it within `graceMs`, so a concurrent host or gateway write wins cleanly.
   * An attempt left open (its host is gone with the queue's data) is closed. Returns whether it wrote.
   */
  markLost(
    row: Pick<JobRow, 'id' | 'status' | 'attempt'>,
    graceMs: number,
    end: { status: WrittenStatus; message: string; error?: JobError | undefined },
  ): Promise<boolean> {
    const now = new Date()
    const failed = TERMINAL_STATUSES.includes(end.status)
    return this.call('reconcile job', () =>
      this.db.transaction(async (tx) => {
        const written = await writeJob(
          tx,
          {
            status: end.status,
            message: end.message,
            updatedAt: now,
            ...(failed ? { error: end.error, finishedAt: now, nextAttemptAt: null } : {}),
          },
          and(
            eq(jobs.id, row.id),
            guard({ kind: 'lost', status: row.status, attempt: row.attempt }),
            olderThan(graceMs),
          ),
        )
        if (!written) return false
        await closeOpenAttempts(tx, row.id, {
          finishedAt: now,
          outcome: failed ? 'failed' : 'interrupted',
          reason: 'lost',
          message: 'the queue lost this job (Redis data lost)',
        })
        return true
      }),
    )
  }

  /** Keeps a status change in the job's history and moves the row's seq forward. */
  recordEvent(event: ProgressEvent): Promise<void> {
    return this.recordEvents([event])
  }

  /** `recordEvent` for several events at once: one statement. */
  recordEvents(events: ProgressEvent[]): Promise<void> {
    return this.call('event', () => recordJobEvents(this.db, events))
  }

  /**
   * Rows that are not finished (queued, retrying, running) and that nobody has written for `graceMs`,
   * oldest first: the reconciler's candidates. The grace keeps it clear of a gateway that has written
   * the row and is about to add the BullMQ job.
   */
  staleUnfinished(graceMs: number, limit: number): Promise<JobRow[]> {
    return this.call('stale jobs', () =>
      this.db
        .select()
        .from(jobs)
        .where(and(unfinished(), olderThan(graceMs)))
        .orderBy(asc(jobs.updatedAt))
        .limit(limit),
    )
  }

  /**
   * Jobs that ended cancelled or failed after `since` and at least `graceMs` ago, oldest first: the
   * reconciler removes their partial artifacts (e.g. of a job the gateway cancelled while it waited to
   * retry, which no host was running).
   */
  endedUnfinished(
    since: Date,
    graceMs: number,
    limit: number,
  ): Promise<{ id: string; outputPrefix: string; finishedAt: Date | null }[]> {
    return this.call('ended jobs', () =>
      this.db
        .select({ id: jobs.id, outputPrefix: jobs.outputPrefix, finishedAt: jobs.finishedAt })
        .from(jobs)
        .where(
          and(
            inArray(jobs.status, ['cancelled', 'failed']),
            gt(jobs.finishedAt, since),
            lt(jobs.finishedAt, sql`now() - make_interval(secs => ${graceMs / 1000})`),
          ),
        )
        .orderBy(asc(jobs.finishedAt))
        .limit(limit),
    )
  }
}
