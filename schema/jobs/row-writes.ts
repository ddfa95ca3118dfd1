/** The SQL helpers of JobRecords' writes (records.ts): a new row, a guarded row write, attempt closes. */
import { isDeepStrictEqual } from 'node:util'
import { and, eq, isNull, type SQL } from 'drizzle-orm'
import type { PgUpdateSetSource } from 'drizzle-orm/pg-core'
import type { Db } from '../db/connect.ts'
import { type JobAttemptRow, type JobRow, jobAttempts, jobs } from '../db/tables.ts'
import type { JobGpu } from '../envelope.ts'
import type { JobType } from '../params/index.ts'

/** A job to create: the gateway's submit, or the host's row for a job another producer added. */
export interface NewJob {
  jobId: string
  type: JobType
  params: Record<string, unknown>
  owner?: string | null | undefined
  priority?: number | undefined
  timeoutSec?: number | undefined
  maxAttempts: number
  outputPrefix: string
  gpu?: JobGpu | undefined
}

/** The row of a job to create: queued, no attempt yet. */
export const rowOf = (job: NewJob) => ({
  id: job.jobId,
  type: job.type,
  status: 'queued' as const,
  params: job.params,
  owner: job.owner ?? null,
  priority: job.priority ?? null,
  timeoutSec: job.timeoutSec ?? null,
  maxAttempts: job.maxAttempts,
  outputPrefix: job.outputPrefix,
  gpu: job.gpu ?? null,
})

/** A value as a jsonb column gives it back (no `undefined` members; `null` stays). */
const asJson = (value: unknown): unknown => JSON.parse(JSON.stringify(value ?? null))

/**
 * Whether a stored row is the job `job` asks for: the same jobId resubmitted by the same owner with the
 * same type, params and options (an idempotent resubmit), not a different request under that id.
 */
export function sameJob(row: JobRow, job: NewJob): boolean {
  const want = rowOf(job)
  return (
    row.owner === want.owner &&
    row.type === want.type &&
    isDeepStrictEqual(row.params, asJson(want.params)) &&
    row.priority === want.priority &&
    row.timeoutSec === want.timeoutSec &&
    row.maxAttempts === want.maxAttempts &&
    isDeepStrictEqual(row.gpu ?? null, asJson(want.gpu))
  )
}

/** Writes the job row where `where` holds; returns whether it did (a guarded write that lost writes none). */
export async function writeJob(
  db: Db,
  values: PgUpdateSetSource<typeof jobs>,
  where: SQL | undefined,
): Promise<boolean> {
  const rows = await db.update(jobs).set(values).where(where).returning({ id: jobs.id })
  return rows.length > 0
}

/** How an attempt row ends: when, its outcome, and why. */
export type AttemptClose = Pick<JobAttemptRow, 'finishedAt' | 'outcome' | 'reason' | 'message'>

/**
 * Closes the job's attempt rows that are still open (only attempt `attempt`'s when given). The first end
 * recorded stands: a host that lost the job to another must not rewrite it.
 */
export async function closeOpenAttempts(
  db: Db,
  jobId: string,
  end: AttemptClose,
  attempt?: number,
): Promise<void> {
  await db
    .update(jobAttempts)
    .set(end)
    .where(
      and(
        eq(jobAttempts.jobId, jobId),
        attempt === undefined ? undefined : eq(jobAttempts.attempt, attempt),
        isNull(jobAttempts.finishedAt),
      ),
    )
}
