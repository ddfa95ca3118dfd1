import { and, asc, eq, gt, inArray, isNull, lt, notInArray, sql } from 'drizzle-orm'
import type { ArtifactRecord } from '../functions/sdk/context.ts'
import { isConnectionError } from '../schema/clients.ts'
import type { JobError, JobStatus } from '../schema/common.ts'
import { TERMINAL_STATUSES } from '../schema/common.ts'
import type { Db } from '../schema/db/connect.ts'
import { recordJobEvent } from '../schema/db/events.ts'
import { type JobRow, jobArtifacts, jobAttempts, jobs } from '../schema/db/tables.ts'
import type { ProgressEvent } from '../schema/events.ts'
import type { JobType } from '../schema/params/index.ts'

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

/** Postgres errors worth retrying: the server is down, restarting or unreachable. */
const transient = isConnectionError

/**
 * The GPU host's writes to Postgres. Every write is guarded by the attempt number, so a host that lost
 * its job (stalled, then taken by another host) cannot overwrite the newer attempt's state, and the
 * terminal state is written once. Writes are retried while Postgres is unreachable.
 */
export class JobState {
  constructor(
    private readonly db: Db,
    private readonly host: string,
    private readonly log: (msg: string) => void = () => {},
  ) {}

  private async retry<T>(what: string, fn: () => Promise<T>, maxWaitMs = 120_000): Promise<T> {
    const deadline = Date.now() + maxWaitMs
    for (let delay = 200; ; delay = Math.min(delay * 2, 5000)) {
      try {
        return await fn()
      } catch (err) {
        if (!transient(err) || Date.now() + delay > deadline) throw err
        this.log(`postgres unavailable (${what}): retrying in ${delay} ms`)
        await sleep(delay)
      }
    }
  }

  /** Creates the row of a job added by another producer (the gateway creates its own). */
  ensureJob(job: {
    jobId: string
    type: JobType
    params: Record<string, unknown>
    maxAttempts: number
    outputPrefix: string
    owner?: string | null | undefined
    priority?: number | undefined
    timeoutSec?: number | undefined
  }): Promise<void> {
    return this.retry('ensure job', async () => {
      await this.db
        .insert(jobs)
        .values({
          id: job.jobId,
          type: job.type,
          status: 'queued',
          params: job.params,
          maxAttempts: job.maxAttempts,
          outputPrefix: job.outputPrefix,
          owner: job.owner ?? null,
          priority: job.priority ?? null,
          timeoutSec: job.timeoutSec ?? null,
        })
        .onConflictDoNothing()
    })
  }

  /**
   * The message of a job put back in the queue without an attempt (no engine for it on the host that
   * took it); the row keeps its status (queued, or retrying between attempts). The row when the message
   * changed, null when it said so already or the job is no longer waiting (cancelled, running elsewhere).
   */
  noteWaiting(jobId: string, message: string): Promise<JobRow | null> {
    return this.retry('waiting message', async () => {
      const [row] = await this.db
        .update(jobs)
        .set({ message, updatedAt: new Date() })
        .where(
          and(
            eq(jobs.id, jobId),
            inArray(jobs.status, ['queued', 'retrying']),
            sql`${jobs.message} <> ${message}`,
          ),
        )
        .returning()
      return row ?? null
    })
  }

  /** A queued job that cannot run (invalid payload): failed at once, without retries. */
  failUnstarted(jobId: string, error: JobError): Promise<void> {
    return this.retry('fail job', async () => {
      await this.db
        .update(jobs)
        .set({ status: 'failed', error, finishedAt: new Date(), updatedAt: new Date() })
        .where(and(eq(jobs.id, jobId), notInArray(jobs.status, [...TERMINAL_STATUSES])))
    })
  }

  /**
   * Starts the next attempt: status running, attempt + 1, an attempt row; an attempt left unfinished by a
   * host that died is closed as interrupted. Null when the job is already terminal (cancelled meanwhile).
   */
  startAttempt(jobId: string): Promise<JobRow | null> {
    return this.retry('start attempt', () =>
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
          .where(and(eq(jobs.id, jobId), notInArray(jobs.status, [...TERMINAL_STATUSES])))
          .returning()
        if (!row) return null
        await tx
          .update(jobAttempts)
          .set({
            finishedAt: new Date(),
            outcome: 'interrupted',
            reason: 'crash',
            message: 'the host running this attempt stopped',
          })
          .where(and(eq(jobAttempts.jobId, jobId), isNull(jobAttempts.finishedAt)))
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
    return this.retry('attempt pid', async () => {
      await this.db
        .update(jobAttempts)
        .set({ pid })
        .where(and(eq(jobAttempts.jobId, jobId), eq(jobAttempts.attempt, attempt)))
    })
  }

  /** Latest progress of a running attempt (throttled by the caller). */
  progress(jobId: string, attempt: number, event: ProgressEvent): Promise<void> {
    return this.retry('progress', async () => {
      await this.db
        .update(jobs)
        .set({
          progress: event.progress,
          message: event.message,
          lastSeq: sql`greatest(${jobs.lastSeq}, ${event.seq})`,
          updatedAt: new Date(),
        })
        .where(and(eq(jobs.id, jobId), eq(jobs.attempt, attempt), eq(jobs.status, 'running')))
    })
  }

  /**
   * Ends an attempt. A terminal status is written only if the job is not terminal yet and this is still
   * its current attempt; returns whether this call wrote it. The caller publishes the event afterwards,
   * so a client that sees the event finds the row already in its final state.
   */
  finishAttempt(
    jobId: string,
    attempt: number,
    end: {
      status: Exclude<JobStatus, 'queued' | 'running'> | 'queued'
      progress: number
      message: string
      result?: unknown
      error?: JobError | null
      artifacts?: ArtifactRecord[]
      nextAttemptAt?: Date | null
    },
  ): Promise<boolean> {
    const now = new Date()
    const terminal = TERMINAL_STATUSES.includes(end.status)
    return this.retry('finish attempt', () =>
      this.db.transaction(async (tx) => {
        const [row] = await tx
          .update(jobs)
          .set({
            status: end.status,
            progress: end.progress,
            message: end.message,
            result: end.result === undefined ? undefined : (end.result ?? null),
            error: end.error === undefined ? undefined : end.error,
            finishedAt: terminal ? now : null,
            nextAttemptAt: end.nextAttemptAt ?? null,
            updatedAt: now,
          })
          .where(
            and(
              eq(jobs.id, jobId),
              eq(jobs.attempt, attempt),
              notInArray(jobs.status, [...TERMINAL_STATUSES]),
            ),
          )
          .returning({ id: jobs.id })
        await tx
          .update(jobAttempts)
          .set({
            finishedAt: now,
            outcome: end.status === 'queued' ? 'interrupted' : end.status,
            reason: end.error?.reason ?? null,
            message: end.error?.message ?? null,
          })
          // The first end recorded stands: a host that lost the job to another must not rewrite it.
          .where(
            and(
              eq(jobAttempts.jobId, jobId),
              eq(jobAttempts.attempt, attempt),
              isNull(jobAttempts.finishedAt),
            ),
          )
        if (!row) return false
        if (end.artifacts) {
          await tx.delete(jobArtifacts).where(eq(jobArtifacts.jobId, jobId))
          if (end.artifacts.length > 0)
            await tx.insert(jobArtifacts).values(end.artifacts.map((a) => ({ jobId, ...a })))
        }
        return true
      }),
    )
  }

  /** Keeps a status change in the job's history and moves the row's seq forward. */
  recordEvent(event: ProgressEvent): Promise<void> {
    return this.retry('event', () => recordJobEvent(this.db, event))
  }

  /**
   * Rows that are not finished (queued, retrying, running) and that nobody has written for `graceMs`,
   * oldest first: the reconciler's candidates. The grace keeps it clear of a gateway that has written
   * the row and is about to add the BullMQ job.
   */
  staleUnfinished(graceMs: number, limit: number): Promise<JobRow[]> {
    return this.retry('stale jobs', () =>
      this.db
        .select()
        .from(jobs)
        .where(
          and(
            notInArray(jobs.status, [...TERMINAL_STATUSES]),
            lt(jobs.updatedAt, sql`now() - make_interval(secs => ${graceMs / 1000})`),
          ),
        )
        .orderBy(asc(jobs.updatedAt))
        .limit(limit),
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
    end: { status: 'queued' | 'retrying' | 'failed'; message: string; error?: JobError },
  ): Promise<boolean> {
    const now = new Date()
    const failed = end.status === 'failed'
    return this.retry('reconcile job', () =>
      this.db.transaction(async (tx) => {
        const [written] = await tx
          .update(jobs)
          .set({
            status: end.status,
            message: end.message,
            updatedAt: now,
            ...(failed ? { error: end.error, finishedAt: now, nextAttemptAt: null } : {}),
          })
          .where(
            and(
              eq(jobs.id, row.id),
              eq(jobs.status, row.status),
              eq(jobs.attempt, row.attempt),
              lt(jobs.updatedAt, sql`now() - make_interval(secs => ${graceMs / 1000})`),
            ),
          )
          .returning({ id: jobs.id })
        if (!written) return false
        await tx
          .update(jobAttempts)
          .set({
            finishedAt: now,
            outcome: failed ? 'failed' : 'interrupted',
            reason: 'lost',
            message: 'the queue lost this job (Redis data lost)',
          })
          .where(and(eq(jobAttempts.jobId, row.id), isNull(jobAttempts.finishedAt)))
        return true
      }),
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
    return this.retry('ended jobs', () =>
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

  getJob(jobId: string): Promise<JobRow | undefined> {
    return this.retry(
      'read job',
      async () => (await this.db.select().from(jobs).where(eq(jobs.id, jobId)))[0],
    )
  }

  statusOf(jobIds: string[]): Promise<{ id: string; status: JobStatus }[]> {
    return this.db.select({ id: jobs.id, status: jobs.status }).from(jobs).where(inArray(jobs.id, jobIds))
  }
}
