import type { ErrorReason } from '../../schema/common.ts'

/**
 * An error that retrying cannot fix (bad params, bad or empty dataset, engine not configured): the job
 * fails at once, whatever attempts are left.
 *
 * @example throw new NonRetryableError('dataset is empty', { reason: 'invalid_dataset' })
 */
export class NonRetryableError extends Error {
  override name = 'NonRetryableError'
  readonly reason: ErrorReason
  readonly code: string
  constructor(message: string, opts: { reason?: ErrorReason; code?: string; cause?: unknown } = {}) {
    super(message, { cause: opts.cause })
    this.reason = opts.reason ?? 'non_retryable'
    this.code = opts.code ?? this.reason.toUpperCase()
  }
}

/** An error worth another attempt (a flaky download, an engine that crashed); the default for any throw. */
export class RetryableError extends Error {
  override name = 'RetryableError'
  readonly reason: ErrorReason
  readonly code: string
  constructor(message: string, opts: { reason?: ErrorReason; code?: string; cause?: unknown } = {}) {
    super(message, { cause: opts.cause })
    this.reason = opts.reason ?? 'handler_error'
    this.code = opts.code ?? this.reason.toUpperCase()
  }
}

/** The engine the job asked for is not installed or not configured on this host. */
export const engineNotConfigured = (engine: string, hint: string): NonRetryableError =>
  new NonRetryableError(`engine "${engine}" is not configured on this host: ${hint}`, {
    reason: 'engine_not_configured',
  })

/** Throws the signal's reason as an error when it is aborted; call it between steps. */
export function throwIfAborted(signal: AbortSignal): void {
  if (signal.aborted) throw signal.reason instanceof Error ? signal.reason : new Error(String(signal.reason))
}
