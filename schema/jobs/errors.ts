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

  /** The failure as plain data, as it crosses IPC from a job process (gpu-host/ipc.ts ChildError). */
  toWire(): { name: string; message: string; code: string; reason: ErrorReason; retryable: boolean } {
    return {
      name: this.name,
      message: this.message,
      code: this.code,
      reason: this.reason,
      retryable: this.retryable,
    }
  }
}

/**
 * A failure class whose instances differ only in their message (and cause): its name, reason, code and
 * whether it is retryable are the class's.
 */
function failureClass(name: string, reason: ErrorReason, opts: { code: string; retryable: boolean }) {
  return class extends JobFailure {
    constructor(message: string, cause?: unknown) {
      super(reason, message, { ...opts, cause })
      this.name = name
    }
  }
}

/** Why a job process is ended from outside. */
export type AbortReason = 'cancelled' | 'timeout' | 'shutdown'

/**
 * The job process was ended from outside: cancelled (final), timed out or interrupted by the host's
 * shutdown (both retryable).
 */
export class AbortError extends JobFailure {
  override name = 'AbortError'
  constructor(reason: AbortReason, message = `job ${reason}`) {
    super(reason, message, { retryable: reason !== 'cancelled' })
  }
}

/** The job process sent a message that is not of the protocol: it is killed, the attempt retried. */
export const ProtocolError = failureClass('ProtocolError', 'crash', { code: 'PROTOCOL', retryable: true })
export type ProtocolError = InstanceType<typeof ProtocolError>

/** The job process exited (or could not start) without a result or an error of its own. */
export class UnexpectedExitError extends JobFailure {
  override name = 'UnexpectedExitError'
  /** `how`: e.g. `exited with code 3`, `was killed by SIGKILL`. */
  constructor(how: string) {
    super('crash', `job process ${how}`, { code: 'CRASH' })
  }
}

/** The job process asked to store an artifact outside its prefix: the attempt fails, not retryable. */
export const ArtifactPathError = failureClass('ArtifactPathError', 'non_retryable', {
  code: 'INVALID_ARTIFACT_PATH',
  retryable: false,
})
export type ArtifactPathError = InstanceType<typeof ArtifactPathError>

/** S3 did not take a write of the attempt (the manifest, the invalidation before a run): retryable. */
export const StorageError = failureClass('StorageError', 'storage', { code: 'STORAGE', retryable: true })
export type StorageError = InstanceType<typeof StorageError>

/** The job was cancelled: by request, before it started, or while it ran. Final. */
export const CancelledError = failureClass('CancelledError', 'cancelled', {
  code: 'CANCELLED',
  retryable: false,
})
export type CancelledError = InstanceType<typeof CancelledError>

/** A payload no handler can run (a foreign producer's envelope, an unknown type, a foreign prefix). */
export const InvalidJobError = failureClass('InvalidJobError', 'invalid_params', {
  code: 'INVALID_PARAMS',
  retryable: false,
})
export type InvalidJobError = InstanceType<typeof InvalidJobError>

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
