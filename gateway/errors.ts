import { isConnectionError, isRedisConnectionError, isUnsentRedisCommand } from '../schema/clients.ts'
import type { FieldIssue } from '../schema/issues.ts'

/** An error the API reports as `{error: {code, message, issues?}}` with its HTTP status. */
export class ApiError extends Error {
  override name = 'ApiError'
  constructor(
    readonly status: 400 | 401 | 403 | 404 | 405 | 409 | 413 | 415 | 429 | 503,
    readonly code: string,
    message: string,
    readonly issues?: FieldIssue[],
    /** Extra response headers (Retry-After). */
    readonly headers?: Record<string, string>,
  ) {
    super(message)
  }

  toJSON(): { error: { code: string; message: string; issues?: FieldIssue[] } } {
    return {
      error: { code: this.code, message: this.message, ...(this.issues ? { issues: this.issues } : {}) },
    }
  }
}

export type Backend = 'Redis' | 'Postgres' | 'S3'

/**
 * A backing service could not be reached: a 503 `backend_unavailable` that names it. `detail` says what
 * it means for the request (for a submit: that nothing was queued).
 */
export class BackendUnavailableError extends ApiError {
  override name = 'BackendUnavailableError'
  constructor(
    readonly backend: Backend,
    detail = 'retry shortly',
    options?: { cause?: unknown },
  ) {
    super(503, 'backend_unavailable', `${backend} is unavailable; ${detail}`, undefined, {
      'retry-after': '2',
    })
    if (options?.cause !== undefined) this.cause = options.cause
  }
}

/** Connection failures of Redis, Postgres or S3: the request gets a 503, the process stays up. */
export const isBackendDown = isConnectionError

/** A Redis command refused unsent (see schema/clients.ts): Redis never saw it. */
export { isUnsentRedisCommand }

/**
 * Which backing service a connection error came from, by its shape, for errors that no call site
 * tagged: the AWS SDK's carry `$metadata`, ioredis' are recognised by schema/clients.ts, the rest are
 * postgres.js'.
 */
export function backendOf(err: unknown): Backend {
  if ((err as { $metadata?: unknown } | undefined)?.$metadata !== undefined) return 'S3'
  if (isRedisConnectionError(err)) return 'Redis'
  return 'Postgres'
}

/**
 * Runs `fn`, turning a connection failure into a `BackendUnavailableError` for `backend`.
 *
 * @example await onBackend('Redis', () => redis.set(key, '1'))
 */
export async function onBackend<T>(backend: Backend, fn: () => Promise<T>, detail?: string): Promise<T> {
  try {
    return await fn()
  } catch (err) {
    if (isBackendDown(err) && !(err instanceof ApiError))
      throw new BackendUnavailableError(backend, detail, { cause: err })
    throw err
  }
}
