import { sql } from 'drizzle-orm'
import {
  bigint,
  doublePrecision,
  index,
  integer,
  jsonb,
  pgTable,
  primaryKey,
  text,
  timestamp,
} from 'drizzle-orm/pg-core'
import type { JobError, JobStatus } from '../common.ts'
import type { JobGpu } from '../envelope.ts'
import type { JobType } from '../params/index.ts'

const ts = (name: string) => timestamp(name, { withTimezone: true, mode: 'date' })

/** One row per job: its current state. The terminal state is written exactly once. */
export const jobs = pgTable(
  'jobs',
  {
    id: text('id').primaryKey(),
    type: text('type').$type<JobType>().notNull(),
    status: text('status').$type<JobStatus>().notNull(),
    progress: doublePrecision('progress').notNull().default(0),
    message: text('message').notNull().default(''),
    attempt: integer('attempt').notNull().default(0),
    maxAttempts: integer('max_attempts').notNull().default(1),
    params: jsonb('params').$type<Record<string, unknown>>().notNull(),
    result: jsonb('result'),
    error: jsonb('error').$type<JobError>(),
    owner: text('owner'),
    priority: integer('priority'),
    timeoutSec: integer('timeout_sec'),
    /** The job's own GPU needs (`gpu` of the submit body and envelope); null: its handler's. */
    gpu: jsonb('gpu').$type<JobGpu>(),
    outputPrefix: text('output_prefix').notNull(),
    host: text('host'),
    lastSeq: integer('last_seq').notNull().default(0),
    createdAt: ts('created_at').notNull().defaultNow(),
    startedAt: ts('started_at'),
    finishedAt: ts('finished_at'),
    updatedAt: ts('updated_at').notNull().defaultNow(),
    nextAttemptAt: ts('next_attempt_at'),
  },
  (t) => [
    index('jobs_created_idx').on(t.createdAt.desc(), t.id.desc()),
    index('jobs_status_idx').on(t.status),
    index('jobs_owner_idx').on(t.owner, t.createdAt.desc()),
  ],
)
export type JobRow = typeof jobs.$inferSelect

/** The `job_id` column of a job's child rows: gone with the job. A function: a column builder is per table. */
const jobIdRef = () =>
  text('job_id')
    .notNull()
    .references(() => jobs.id, { onDelete: 'cascade' })

/** One row per attempt: where and when it ran, and how it ended. */
export const jobAttempts = pgTable(
  'job_attempts',
  {
    jobId: jobIdRef(),
    attempt: integer('attempt').notNull(),
    host: text('host').notNull(),
    pid: integer('pid'),
    startedAt: ts('started_at').notNull().defaultNow(),
    finishedAt: ts('finished_at'),
    outcome: text('outcome').$type<'completed' | 'failed' | 'retrying' | 'cancelled' | 'interrupted'>(),
    reason: text('reason'),
    message: text('message'),
  },
  (t) => [primaryKey({ columns: [t.jobId, t.attempt] })],
)
export type JobAttemptRow = typeof jobAttempts.$inferSelect

/** Status changes of each job (the full progress stream is in the Redis replay log). */
export const jobEvents = pgTable(
  'job_events',
  {
    jobId: jobIdRef(),
    seq: integer('seq').notNull(),
    status: text('status').$type<JobStatus>().notNull(),
    progress: doublePrecision('progress').notNull(),
    message: text('message').notNull(),
    attempt: integer('attempt').notNull(),
    at: ts('at').notNull().default(sql`now()`),
  },
  (t) => [primaryKey({ columns: [t.jobId, t.seq] })],
)

/**
 * The numbers a job reported beside its progress (`ctx.progress(pct, message, metrics)`), one row per
 * event that carried them, so a loss curve survives the replay log's cap and TTL.
 */
export const jobMetrics = pgTable(
  'job_metrics',
  {
    jobId: jobIdRef(),
    seq: integer('seq').notNull(),
    attempt: integer('attempt').notNull(),
    progress: doublePrecision('progress').notNull(),
    metrics: jsonb('metrics').$type<Record<string, number>>().notNull(),
    at: ts('at').notNull(),
  },
  (t) => [primaryKey({ columns: [t.jobId, t.seq] })],
)

/**
 * What a job's process printed, per attempt: its stdout and stderr lines and its `ctx.log` lines, in the
 * order the host received them (`seq` from 1 per attempt), bounded per attempt (schema/db/logs.ts).
 */
export const jobLogs = pgTable(
  'job_logs',
  {
    jobId: jobIdRef(),
    attempt: integer('attempt').notNull(),
    seq: integer('seq').notNull(),
    at: ts('at').notNull(),
    stream: text('stream').$type<'stdout' | 'stderr' | 'log'>().notNull(),
    level: text('level').$type<'debug' | 'info' | 'warn' | 'error'>(),
    text: text('text').notNull(),
  },
  (t) => [primaryKey({ columns: [t.jobId, t.attempt, t.seq] })],
)

/** Per attempt: how many lines and bytes of its log were kept, and how many lines were dropped past the cap. */
export const jobLogCounts = pgTable(
  'job_log_counts',
  {
    jobId: jobIdRef(),
    attempt: integer('attempt').notNull(),
    lines: integer('lines').notNull().default(0),
    bytes: integer('bytes').notNull().default(0),
    dropped: integer('dropped').notNull().default(0),
  },
  (t) => [primaryKey({ columns: [t.jobId, t.attempt] })],
)

/** The files of a job's final output, as listed in its manifest. */
export const jobArtifacts = pgTable(
  'job_artifacts',
  {
    jobId: jobIdRef(),
    path: text('path').notNull(),
    key: text('key').notNull(),
    size: bigint('size', { mode: 'number' }).notNull(),
    sha256: text('sha256').notNull(),
    contentType: text('content_type').notNull(),
    createdAt: ts('created_at').notNull().defaultNow(),
  },
  (t) => [primaryKey({ columns: [t.jobId, t.path] })],
)
export type JobArtifactRow = typeof jobArtifacts.$inferSelect

export const tables = { jobs, jobAttempts, jobEvents, jobArtifacts }
