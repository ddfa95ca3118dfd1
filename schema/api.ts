import * as v from 'valibot'
import { JobError, JobId, JobStatus } from './common.ts'
import { JobGpu, JobOptions } from './envelope.ts'
import { JobType } from './params/index.ts'

/** `POST /api/train` (alias `POST /api/jobs`). Params are checked against the type's schema next. */
export const SubmitJobBody = v.strictObject({
  type: JobType,
  params: v.record(v.string(), v.unknown()),
  jobId: v.optional(JobId),
  ...JobOptions,
})
export type SubmitJobBody = v.InferOutput<typeof SubmitJobBody>

export const SubmitJobResponse = v.object({
  jobId: JobId,
  status: JobStatus,
  statusUrl: v.string(),
  streamUrl: v.string(),
})
export type SubmitJobResponse = v.InferOutput<typeof SubmitJobResponse>

/** The most jobs one `POST /api/jobs/batch` may submit. */
export const MAX_BATCH_JOBS = 100

/**
 * `POST /api/jobs/batch`: 1 to MAX_BATCH_JOBS submit bodies, each checked like a single submit (its
 * errors name `jobs[3].params.epochs`), all queued or none.
 */
export const SubmitBatchBody = v.strictObject({
  jobs: v.pipe(v.array(SubmitJobBody), v.minLength(1), v.maxLength(MAX_BATCH_JOBS)),
})
export type SubmitBatchBody = v.InferOutput<typeof SubmitBatchBody>

/** The answer to a batch: one submit answer per body, in the bodies' order. */
export const SubmitBatchResponse = v.object({ jobs: v.array(SubmitJobResponse) })
export type SubmitBatchResponse = v.InferOutput<typeof SubmitBatchResponse>

/**
 * One stored file of a job's output, as its manifest lists it and a job process is told it was stored;
 * `path` is relative to the job's prefix.
 */
export const ArtifactRecord = v.object({
  path: v.string(),
  key: v.string(),
  size: v.number(),
  sha256: v.string(),
  contentType: v.string(),
})
export type ArtifactRecord = v.InferOutput<typeof ArtifactRecord>

/** One file of a job's output in the API: its record and `url`, the gateway's download route. */
export const Artifact = v.object({ ...ArtifactRecord.entries, url: v.string() })
export type Artifact = v.InferOutput<typeof Artifact>

/**
 * One attempt of a job in its status body, as its attempt row has it (null: not known, or not yet).
 * `outcome` is how the attempt ended (`failed` also when the job retried after it), null while it runs;
 * `reason` is the failure's (`timeout`, `crash`, `cancelled`, ...).
 */
export const JobAttempt = v.object({
  attempt: v.number(),
  hostId: v.nullable(v.string()),
  pid: v.nullable(v.number()),
  startedAt: v.nullable(v.string()),
  finishedAt: v.nullable(v.string()),
  outcome: v.nullable(v.picklist(['completed', 'failed', 'cancelled', 'interrupted'])),
  reason: v.nullable(v.string()),
  message: v.nullable(v.string()),
})
export type JobAttempt = v.InferOutput<typeof JobAttempt>

/** `GET /api/status/:jobId`. */
export const JobStatusBody = v.object({
  jobId: JobId,
  type: JobType,
  status: JobStatus,
  progress: v.number(),
  message: v.string(),
  attempt: v.number(),
  maxAttempts: v.number(),
  params: v.record(v.string(), v.unknown()),
  result: v.nullable(v.unknown()),
  error: v.optional(v.nullable(JobError)),
  artifacts: v.array(Artifact),
  createdAt: v.string(),
  startedAt: v.nullable(v.string()),
  finishedAt: v.nullable(v.string()),
  updatedAt: v.string(),
  nextAttemptAt: v.optional(v.nullable(v.string())),
  seq: v.number(),
  /** Every attempt so far, first attempt first. */
  attempts: v.array(JobAttempt),
  /** The job's priority (1 runs first); null: none was given, so it runs in arrival order. */
  priority: v.nullable(v.number()),
  /** The timeout each attempt runs under: the job's own, or its type's default. */
  timeoutSec: v.number(),
  /** The job's own GPU needs as submitted (`gpu`); null: none were given, so its handler's apply. */
  gpu: v.nullable(JobGpu),
  /** The type's defaults of the per-job options, so a client can tell which ones a job overrode. */
  optionDefaults: v.object({ timeoutSec: v.number(), maxAttempts: v.number() }),
})
export type JobStatusBody = v.InferOutput<typeof JobStatusBody>

/**
 * One job in `GET /api/jobs`: the status body without `params`, `result`, `artifacts` and `attempts` (which can be
 * large; a list of 500 must stay small) nor the options, from the stored state. `GET /api/status/:jobId` has the rest.
 */
export const JobSummary = v.omit(JobStatusBody, [
  'params',
  'result',
  'artifacts',
  'attempts',
  'priority',
  'timeoutSec',
  'gpu',
  'optionDefaults',
])
export type JobSummary = v.InferOutput<typeof JobSummary>

export const JobListBody = v.object({ jobs: v.array(JobSummary), nextCursor: v.nullable(v.string()) })
export type JobListBody = v.InferOutput<typeof JobListBody>

/** `POST /api/jobs/:jobId/retry`: the job, whose next attempt is due now. */
export const RetryJobResponse = v.object({ jobId: JobId, status: JobStatus })
export type RetryJobResponse = v.InferOutput<typeof RetryJobResponse>

export const ErrorBody = v.object({
  error: v.object({
    code: v.string(),
    message: v.string(),
    issues: v.optional(v.array(v.object({ path: v.string(), message: v.string() }))),
  }),
})
export type ErrorBody = v.InferOutput<typeof ErrorBody>

/** One line of a job's log (schema/db/logs.ts): `seq` from 1 per attempt, `at` when the host received it. */
export const JobLogLine = v.object({
  seq: v.number(),
  at: v.string(),
  stream: v.picklist(['stdout', 'stderr', 'log']),
  level: v.optional(v.picklist(['debug', 'info', 'warn', 'error'])),
  text: v.string(),
})

/** `GET /api/jobs/:jobId/logs`: one attempt's lines, how many were dropped past the cap, the job's attempts. */
export const JobLogsBody = v.object({
  jobId: JobId,
  attempt: v.number(),
  lines: v.array(JobLogLine),
  dropped: v.number(),
  attempts: v.array(v.number()),
})
export type JobLogsBody = v.InferOutput<typeof JobLogsBody>

/** One progress event's metrics (`ctx.progress(pct, message, metrics)`), as `job_metrics` keeps them. */
export const JobMetricPoint = v.object({
  seq: v.number(),
  attempt: v.number(),
  progress: v.number(),
  at: v.string(),
  metrics: v.record(v.string(), v.number()),
})
export type JobMetricPoint = v.InferOutput<typeof JobMetricPoint>

/** `GET /api/jobs/:jobId/metrics`: every metric point of the job, in seq order (attempts one after another). */
export const JobMetricsBody = v.object({ jobId: JobId, points: v.array(JobMetricPoint) })
export type JobMetricsBody = v.InferOutput<typeof JobMetricsBody>
