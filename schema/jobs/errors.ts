/**
 * The one error vocabulary of a job's failures: each way a job or an attempt can fail is a small class
 * with a `reason` (the status body's `error.reason`), a `code`, whether another attempt may help, and
 * `toJobError()`, the `{code, reason, message}` stored on the row. Nothing matches on message text.
 */
import type { ErrorReason, JobError } from '../common.ts'

export interface JobFailureOptions {
  /** Default: the reason in capitals (`timeout` -> `TIMEOUT`). */
  code?: string
  /** Default true: everything is retryable unless it says otherwise. */
  retryable?: boolean
  cause?: unknown
}

/**
 * Why a job or one of its attempts failed.
 *
 * @example new JobFailure('timeout', 'job timed out after 5s').toJobError()
 * // { code: 'TIMEOUT', reason: 'timeout', message: 'job timed out after 5s' }
 */
export class JobFailure extends Error {
  override name = 'JobFailure'
  readonly reason: ErrorReason
  readonly code: string
  readonly retryable: boolean

  constructor(reason: ErrorReason, message: string, opts: JobFailureOptions = {}) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause })
    this.reason = reason
    this.code = opts.code ?? reason.toUpperCase()
    this.retryable = opts.retryable ?? true
  }

  /** The error as the row and the status body keep it. */
  toJobError(): JobError {
    return { code: this.code, reason: this.reason, message: this.message }
  }
}

/** S3 did not take a write of the attempt (the manifest, the invalidation before a run): retryable. */
export class StorageError extends JobFailure {
  override name = 'StorageError'
  constructor(message: string, cause?: unknown) {
    super('storage', message, { code: 'STORAGE', retryable: true, cause })
  }
}

/** The job was cancelled: by request, before it started, or while it ran. Final. */
export class CancelledError extends JobFailure {
  override name = 'CancelledError'
  constructor(message: string) {
    super('cancelled', message, { code: 'CANCELLED', retryable: false })
  }
}

/** A payload no handler can run (a foreign producer's envelope, an unknown type, a foreign prefix). */
export class InvalidJobError extends JobFailure {
  override name = 'InvalidJobError'
  constructor(message: string) {
    super('invalid_params', message, { code: 'INVALID_PARAMS', retryable: false })
  }
}

/** Attempts started past the job's budget: the earlier ones were interrupted by host failures. */
export class AttemptsExhaustedError extends JobFailure {
  override name = 'AttemptsExhaustedError'
  constructor(maxAttempts: number) {
    super(
      'crash',
      `gave up after ${maxAttempts} attempts (the last ones were interrupted by host failures)`,
      { code: 'CRASH', retryable: false },
    )
  }
}

/** A fault of the host itself, not of the job: the attempt ends so the row does not stay running. */
export class HostFaultError extends JobFailure {
  override name = 'HostFaultError'
  constructor(cause: unknown) {
    super('crash', `host error: ${(cause as Error | undefined)?.message ?? String(cause)}`, {
      code: 'CRASH',
      retryable: false,
      cause,
    })
  }
}

/** The queue lost the job (Redis data loss) and it had no attempt left; see gpu-host/reconciler.ts. */
export class LostJobError extends JobFailure {
  override name = 'LostJobError'
  constructor(attempt: number, maxAttempts: number) {
    super(
      'lost',
      `the queue lost this job (Redis data lost) and it has no attempt left (${attempt}/${maxAttempts})`,
      { code: 'LOST', retryable: false },
    )
  }
}

/** The error of a row kept as a tombstone for a submit whose add to Redis had an unknown outcome. */
export class NotQueuedError extends JobFailure {
  override name = 'NotQueuedError'
  static readonly CODE = 'NOT_QUEUED'
  constructor() {
    super('cancelled', 'not queued: Redis was unavailable during the submit', {
      code: NotQueuedError.CODE,
      retryable: false,
    })
  }
}

/** How a job process ended badly, as the runner reports it (its own error over IPC, an abort, an exit). */
export interface ProcessFailure {
  name: string
  message: string
  code: string
  reason: ErrorReason
  retryable: boolean
  exitCode: number | null
  signal: string | null
  stderrTail: string
}

/** A failed attempt of a job process; keeps the exit and the last lines of stderr for the logs. */
export class AttemptError extends JobFailure {
  readonly exitCode: number | null
  readonly signal: string | null
  readonly stderrTail: string

  constructor(failure: ProcessFailure) {
    super(failure.reason, failure.message, { code: failure.code, retryable: failure.retryable })
    this.name = failure.name
    this.exitCode = failure.exitCode
    this.signal = failure.signal
    this.stderrTail = failure.stderrTail
  }
}
