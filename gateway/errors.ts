import { isConnectionError } from '../schema/clients.ts'
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
export const isBackendDown = isConnectionError
