import type {
  ErrorBody,
  JobListBody,
  JobStatusBody,
  SubmitJobBody,
  SubmitJobResponse,
} from '../../schema/api.ts'
import { UsageError } from './params.ts'

export const DEFAULT_URL = 'http://127.0.0.1:8080'
const REQUEST_TIMEOUT_MS = 30_000

/** The API answered with an error body (or a non-JSON error). */
export class ApiRequestError extends Error {
  override name = 'ApiRequestError'
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly issues: { path: string; message: string }[] = [],
  ) {
    super(message)
  }
}

/** The gateway could not be reached at all (refused, DNS, timeout, reset). */
export class ConnectionError extends Error {
  override name = 'ConnectionError'
  constructor(
    readonly url: string,
    readonly detail: string,
  ) {
    super(`cannot reach the gateway at ${url} (${detail})`)
  }
}

/** The most telling part of a fetch/ws failure: `ECONNREFUSED`, `ENOTFOUND host`, `timeout`, ... */
export function describeNetworkError(err: unknown): string {
  const e = err as { name?: string; code?: string; message?: string; cause?: unknown }
  if (e?.name === 'TimeoutError') return 'timed out'
  const cause = e?.cause as { code?: string; message?: string; errors?: { code?: string }[] } | undefined
  const code = cause?.code ?? cause?.errors?.[0]?.code ?? e?.code
  if (code) return code
  return cause?.message ?? e?.message ?? String(err)
}

/** The gateway's base URL from `GPU_JOBS_URL` (or `--url`): http(s) only, any path prefix kept. */
export function parseBaseUrl(raw: string | undefined): URL {
  const text = (raw ?? '').trim() || DEFAULT_URL
  let url: URL
  try {
    url = new URL(text.includes('://') ? text : `http://${text}`)
  } catch {
    throw new UsageError(`GPU_JOBS_URL is not a URL: "${text}"`)
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:')
    throw new UsageError(`GPU_JOBS_URL must be an http:// or https:// URL, got "${text}"`)
  // Credentials in the URL would be printed with every error that names the gateway; the gateway takes
  // a bearer token, not a user and password. The URL is said without them.
  if (url.username || url.password) {
    url.username = ''
    url.password = ''
    throw new UsageError(
      `GPU_JOBS_URL must not hold a user or password (${url.origin}): set the API token in GPU_JOBS_TOKEN`,
    )
  }
  url.search = ''
  url.hash = ''
  if (!url.pathname.endsWith('/')) url.pathname += '/'
  return url
}

/** A small typed client of the gateway's REST API. */
export class GatewayClient {
  constructor(
    readonly baseUrl: URL,
    readonly token: string | undefined,
  ) {}

  /** `path` is relative to the base (`api/jobs`), so a base with a path prefix keeps it. */
  url(path: string): URL {
    return new URL(path.replace(/^\//, ''), this.baseUrl)
  }

  /** The WebSocket URL (`ws:`/`wss:`) of a path. */
  wsUrl(path: string): URL {
    const url = this.url(path)
    url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:'
    return url
  }

  headers(extra: Record<string, string> = {}): Record<string, string> {
    return {
      accept: 'application/json',
      'user-agent': 'gpu-jobs-cli',
      ...(this.token ? { authorization: `Bearer ${this.token}` } : {}),
      ...extra,
    }
  }

  /** Sends a request; returns the parsed body of a 2xx, throws ApiRequestError or ConnectionError. */
  async request<T>(
    method: string,
    path: string,
    body?: unknown,
    signal?: AbortSignal,
  ): Promise<{ status: number; body: T }> {
    const url = this.url(path)
    const timeout = AbortSignal.timeout(REQUEST_TIMEOUT_MS)
    let res: Response
    try {
      res = await fetch(url, {
        method,
        headers: this.headers(body === undefined ? {} : { 'content-type': 'application/json' }),
        body: body === undefined ? undefined : JSON.stringify(body),
        signal: signal ? AbortSignal.any([signal, timeout]) : timeout,
      })
    } catch (err) {
      if (signal?.aborted) throw err
      throw new ConnectionError(this.baseUrl.href.replace(/\/$/, ''), describeNetworkError(err))
    }
    let text: string
    try {
      text = await res.text()
    } catch (err) {
      throw new ConnectionError(this.baseUrl.href.replace(/\/$/, ''), describeNetworkError(err))
    }
    if (!res.ok) throw errorFromResponse(res.status, res.statusText, text)
    try {
      return { status: res.status, body: JSON.parse(text) as T }
    } catch {
      throw new ApiRequestError(
        res.status,
        'bad_response',
        `${method} ${url.pathname} answered ${res.status} with a body that is not JSON; is GPU_JOBS_URL the gateway?`,
      )
    }
  }

  submit(body: SubmitJobBody) {
    return this.request<SubmitJobResponse>('POST', 'api/jobs', body)
  }

  async status(jobId: string, signal?: AbortSignal): Promise<JobStatusBody> {
    return (
      await this.request<JobStatusBody>('GET', `api/jobs/${encodeURIComponent(jobId)}`, undefined, signal)
    ).body
  }

  async list(query: Record<string, string | undefined>): Promise<JobListBody> {
    const qs = new URLSearchParams()
    for (const [k, v] of Object.entries(query)) if (v !== undefined) qs.set(k, v)
    const q = qs.toString()
    return (await this.request<JobListBody>('GET', `api/jobs${q ? `?${q}` : ''}`)).body
  }

  async cancel(jobId: string): Promise<{ jobId: string; status: string; cancelRequested: boolean }> {
    return (
      await this.request<{ jobId: string; status: string; cancelRequested: boolean }>(
        'POST',
        `api/jobs/${encodeURIComponent(jobId)}/cancel`,
      )
    ).body
  }
}

/** Turns an error response into an ApiRequestError, whether or not it has the API's error shape. */
export function errorFromResponse(status: number, statusText: string, text: string): ApiRequestError {
  let parsed: ErrorBody | undefined
  try {
    parsed = JSON.parse(text) as ErrorBody
  } catch {
    parsed = undefined
  }
  const e = parsed?.error
  if (e && typeof e.code === 'string' && typeof e.message === 'string')
    return new ApiRequestError(status, e.code, e.message, Array.isArray(e.issues) ? e.issues : [])
  const snippet = text.replace(/\s+/g, ' ').trim().slice(0, 200)
  return new ApiRequestError(
    status,
    `http_${status}`,
    `HTTP ${status} ${statusText}${snippet ? `: ${snippet}` : ''}`.trim(),
  )
}
