import * as v from 'valibot'

/**
 * Ids BullMQ or the artifact layout cannot take although their characters are allowed: all digits (BullMQ
 * reserves numeric ids for its own counter) and only dots (`.` and `..` are path segments: the job's
 * `loras/<jobId>/` prefix would be the type's folder or the bucket root, and its status URL unreachable).
 */
export const RESERVED_JOB_ID = /^(?:\d+|\.+)$/
/** The JobId check on top of its characters; json-schema.ts writes it as `not: {pattern: RESERVED_JOB_ID}`. */
export const isUsableJobId = (id: string): boolean => !RESERVED_JOB_ID.test(id)

/**
 * A job id: 1-128 characters of `[A-Za-z0-9_.-]`, not all digits and not only dots.
 * BullMQ refuses `:` in custom ids and reserves numeric ones for its own counter.
 *
 * @example v.is(JobId, 'lora-42') // true; '..' and '123' are not job ids
 */
export const JobId = v.pipe(
  v.string(),
  v.minLength(1, 'must not be empty'),
  v.maxLength(128, 'must be at most 128 characters'),
  v.regex(/^[A-Za-z0-9_.-]+$/, 'may contain only letters, digits, "_", "." and "-"'),
  // One check, so that the JSON Schema can say the same with `not: {pattern}` (see json-schema.ts).
  v.check(isUsableJobId, (issue) =>
    /^\d/.test(String(issue.input))
      ? 'must not be all digits (BullMQ reserves numeric ids)'
      : 'must not be only dots (it would be a path segment, not a folder of its own)',
  ),
)
export type JobId = v.InferOutput<typeof JobId>

/**
 * How many characters of a job id the console and the CLI show (shortJobId in gateway/console/stream.js),
 * and the shortest start of an id that names a job in the job routes.
 */
export const SHORT_ID_LENGTH = 8

export const JOB_STATUSES = ['queued', 'running', 'retrying', 'completed', 'failed', 'cancelled'] as const
export const JobStatus = v.picklist(JOB_STATUSES)
export type JobStatus = v.InferOutput<typeof JobStatus>

export const TERMINAL_STATUSES: readonly JobStatus[] = ['completed', 'failed', 'cancelled']
export const isTerminal = (status: JobStatus): boolean => TERMINAL_STATUSES.includes(status)

/** Why an attempt or a job failed; `error.reason` in the status body. */
export const ERROR_REASONS = [
  'timeout',
  'cancelled',
  'crash',
  'invalid_params',
  'invalid_dataset',
  'engine_not_configured',
  'handler_error',
  'non_retryable',
  'shutdown',
  'storage',
  // The queue lost the job (Redis data loss) and it had no attempt left; see gpu-host/reconciler.ts.
  'lost',
] as const
export const ErrorReason = v.picklist(ERROR_REASONS)
export type ErrorReason = v.InferOutput<typeof ErrorReason>

export const JobError = v.object({
  code: v.string(),
  reason: ErrorReason,
  message: v.string(),
})
export type JobError = v.InferOutput<typeof JobError>

export const Progress = v.pipe(v.number(), v.minValue(0), v.maxValue(100))
