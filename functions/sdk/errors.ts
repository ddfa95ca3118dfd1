import type { ErrorReason } from '../../schema/common.ts'

export interface HandlerErrorOptions {
  reason?: ErrorReason
  code?: string
  cause?: unknown
}

/**
 * Which of the two a handler's error is, under a key every copy of this module shares. A job process runs
 * a bundle with its own copy of this file, while a handler module loaded from its source (a fixture, a
 * module the host names by path) has another: `instanceof` must hold across them, so it checks this
 * brand, not the class's identity.
 */
const KIND = Symbol.for('gpu-jobs.handler-error-kind')
type HandlerErrorKind = 'retryable' | 'non_retryable'
const hasKind = (value: unknown, kind: HandlerErrorKind): boolean =>
  typeof value === 'object' && value !== null && (value as { [KIND]?: unknown })[KIND] === kind

/** What a handler's error tells the host beyond its message: a reason (`ErrorReason`) and a code. */
abstract class HandlerError extends Error {
  readonly reason: ErrorReason
  readonly code: string
  constructor(message: string, opts: HandlerErrorOptions, defaultReason: ErrorReason) {
    super(message, { cause: opts.cause })
    this.reason = opts.reason ?? defaultReason
    this.code = opts.code ?? this.reason.toUpperCase()
  }
}

/**
 * An error that retrying cannot fix (bad params, bad or empty dataset, engine not configured): the job
 * fails at once, whatever attempts are left.
 *
 * @example throw new NonRetryableError('dataset is empty', { reason: 'invalid_dataset' })
 */
export class NonRetryableError extends HandlerError {
  static override [Symbol.hasInstance](value: unknown): boolean {
    return hasKind(value, 'non_retryable')
  }
  readonly [KIND]: HandlerErrorKind = 'non_retryable'
  override name = 'NonRetryableError'
  constructor(message: string, opts: HandlerErrorOptions = {}) {
    super(message, opts, 'non_retryable')
  }
}

/** An error worth another attempt (a flaky download, an engine that crashed); the default for any throw. */
export class RetryableError extends HandlerError {
  static override [Symbol.hasInstance](value: unknown): boolean {
    return hasKind(value, 'retryable')
  }
  readonly [KIND]: HandlerErrorKind = 'retryable'
  override name = 'RetryableError'
  constructor(message: string, opts: HandlerErrorOptions = {}) {
    super(message, opts, 'handler_error')
  }
}

/** The engine the job asked for is not installed or not configured on this host. */
export const engineNotConfigured = (engine: string, hint: string): NonRetryableError =>
  new NonRetryableError(`engine "${engine}" is not configured on this host: ${hint}`, {
    reason: 'engine_not_configured',
  })

/** An aborted signal's reason as an error: the reason itself when it is one (cancel, timeout, shutdown). */
export const abortReason = (signal: AbortSignal): Error =>
  signal.reason instanceof Error ? signal.reason : new Error(String(signal.reason ?? 'aborted'))

/** Throws the signal's reason as an error when it is aborted; call it between steps. */
export function throwIfAborted(signal: AbortSignal): void {
  if (signal.aborted) throw abortReason(signal)
}
