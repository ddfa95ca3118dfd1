import type { FieldIssue } from '../schema/issues.ts'

/** An error the API reports as `{error: {code, message, issues?}}` with its HTTP status. */
export class ApiError extends Error {
  override name = 'ApiError'
  constructor(
    readonly status: 400 | 401 | 403 | 404 | 409 | 413 | 429 | 503,
    readonly code: string,
    message: string,
    readonly issues?: FieldIssue[],
  ) {
    super(message)
  }

  toJSON(): { error: { code: string; message: string; issues?: FieldIssue[] } } {
    return {
      error: { code: this.code, message: this.message, ...(this.issues ? { issues: this.issues } : {}) },
    }
  }
}

/** Connection failures of Redis, Postgres or S3: the request gets a 503, the process stays up. */
export function isBackendDown(err: unknown): boolean {
  const e = err as { code?: string; name?: string; message?: string; cause?: { code?: string } }
  const code = e?.code ?? e?.cause?.code ?? ''
  return (
    [
      'ECONNREFUSED',
      'ECONNRESET',
      'ETIMEDOUT',
      'EPIPE',
      'ENOTFOUND',
      'EHOSTUNREACH',
      'CONNECT_TIMEOUT',
      'CONNECTION_CLOSED',
      'CONNECTION_ENDED',
      'CONNECTION_DESTROYED',
      '57P01',
      '57P03',
      '08006',
      '08001',
    ].includes(code) ||
    /Connection is closed|connect ECONNREFUSED|Stream isn't writeable|MaxRetriesPerRequest|ETIMEDOUT/.test(
      e?.message ?? '',
    )
  )
}
