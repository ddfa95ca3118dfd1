/**
 * A job's log lines (stdout, stderr, `ctx.log`) per attempt: their shape, their bounds, and their reads and
 * writes in `job_logs` / `job_log_counts`. The GPU host writes them in batches; the gateway reads them.
 */
import { and, asc, eq, gt } from 'drizzle-orm'
import { isTerminal } from '../common.ts'
import type { Db } from './connect.ts'
import { jobAttempts, jobLogCounts, jobLogs, jobs } from './tables.ts'

export type LogStream = 'stdout' | 'stderr' | 'log'
export type LogLevel = 'debug' | 'info' | 'warn' | 'error'

/** One line of a job's log: `seq` from 1 per attempt, `at` when the host received it. */
export interface JobLogLine {
  seq: number
  at: string
  stream: LogStream
  level?: LogLevel
  text: string
}

/** How much of an attempt's output is kept: the lines past either cap are counted as dropped. */
export interface LogLimits {
  maxLines: number
  maxBytes: number
  /** A longer line is cut to this many characters (and marked with `…`). */
  maxLineChars: number
}
export const LOG_LIMITS: LogLimits = { maxLines: 2000, maxBytes: 1_000_000, maxLineChars: 4096 }

/** What is published on `logs:<jobId>` (schema/keys.ts) once a batch is stored. */
export interface LogBatchMessage {
  attempt: number
  lines: JobLogLine[]
}

/** An attempt's counts so far (written with each batch). */
export interface LogCounts {
  lines: number
  bytes: number
  dropped: number
}

/** Keeps a batch of one attempt's lines and its counts (once per seq: a retried write adds nothing twice). */
export async function appendJobLogs(
  db: Db,
  jobId: string,
  attempt: number,
  lines: JobLogLine[],
  counts: LogCounts,
): Promise<void> {
  if (lines.length > 0)
    await db
      .insert(jobLogs)
      .values(
        lines.map((l) => ({
          jobId,
          attempt,
          seq: l.seq,
          at: new Date(l.at),
          stream: l.stream,
          level: l.level ?? null,
          text: l.text,
        })),
      )
      .onConflictDoNothing()
  await db
    .insert(jobLogCounts)
    .values({ jobId, attempt, ...counts })
    .onConflictDoUpdate({ target: [jobLogCounts.jobId, jobLogCounts.attempt], set: counts })
}

/** The largest `seq` the column holds (a Postgres integer): a resume point past it is past every line. */
const MAX_SEQ = 2 ** 31 - 1

/** The stored lines of one attempt with `seq > after`, oldest first (`after` up to 2^53 - 1, as clients send). */
export async function readJobLogs(db: Db, jobId: string, attempt: number, after = 0): Promise<JobLogLine[]> {
  // Compared as it is, a number past the column's range makes Postgres refuse the query.
  after = Math.min(after, MAX_SEQ)
  const rows = await db
    .select()
    .from(jobLogs)
    .where(and(eq(jobLogs.jobId, jobId), eq(jobLogs.attempt, attempt), gt(jobLogs.seq, after)))
    .orderBy(asc(jobLogs.seq))
  return rows.map((r) => ({
    seq: r.seq,
    at: r.at.toISOString(),
    stream: r.stream,
    ...(r.level ? { level: r.level } : {}),
    text: r.text,
  }))
}

/** How many lines of an attempt were dropped past the cap (0 when none, or nothing is stored). */
export async function droppedLogLines(db: Db, jobId: string, attempt: number): Promise<number> {
  const [row] = await db
    .select({ dropped: jobLogCounts.dropped })
    .from(jobLogCounts)
    .where(and(eq(jobLogCounts.jobId, jobId), eq(jobLogCounts.attempt, attempt)))
  return row?.dropped ?? 0
}

/** The attempts a job has (an attempt row, or log lines), in order. */
export async function logAttempts(db: Db, jobId: string): Promise<number[]> {
  const [started, logged] = await Promise.all([
    db.select({ attempt: jobAttempts.attempt }).from(jobAttempts).where(eq(jobAttempts.jobId, jobId)),
    db.select({ attempt: jobLogCounts.attempt }).from(jobLogCounts).where(eq(jobLogCounts.jobId, jobId)),
  ])
  return [...new Set([...started, ...logged].map((r) => r.attempt))].sort((a, b) => a - b)
}

/** Whether the stored state says attempt `attempt` is over (its row closed, a later one, or the job's end). */
export async function attemptEnded(db: Db, jobId: string, attempt: number): Promise<boolean> {
  const [job] = await db
    .select({ status: jobs.status, attempt: jobs.attempt })
    .from(jobs)
    .where(eq(jobs.id, jobId))
  if (!job || isTerminal(job.status) || job.attempt > attempt) return true
  const [row] = await db
    .select({ finishedAt: jobAttempts.finishedAt })
    .from(jobAttempts)
    .where(and(eq(jobAttempts.jobId, jobId), eq(jobAttempts.attempt, attempt)))
  return !!row?.finishedAt
}
