/**
 * ComfyUI's HTTP side for the driver: where it is (COMFYUI_URL without its credentials), the bounds of every
 * wait, and bounded requests whose failures are RetryableErrors naming ComfyUI and COMFYUI_URL.
 */
import { RetryableError } from '../../sdk/errors.ts'

/** Bounds of every wait; the defaults suit a real server, tests shorten them. */
export interface ComfyTimings {
  /**
   * One HTTP call, to its response headers. ComfyUI's event loop can stall for seconds while it encodes
   * and streams previews, so this is tens of seconds, not one or two.
   */
  httpTimeoutMs: number
  /** A `/view` download that sends no byte for this long is given up. */
  downloadIdleMs: number
  /** Opening the WebSocket. */
  connectTimeoutMs: number
  /** `/history/<id>` is polled this often while the socket is up (a missed event cannot hang the job)... */
  pollMs: number
  /** ...and this often while it is down. */
  pollWhileDownMs: number
  /** ComfyUI unreachable (socket and HTTP) for this long fails the attempt as retryable. */
  maxDownMs: number
  /**
   * Cancel: how long to wait for an interrupt to land (it lands at the next node boundary). Below the
   * host's KILL_GRACE_SEC (default 10 s), which is all the time a cancelled job process gets.
   */
  cancelWaitMs: number
}

export const DEFAULT_TIMINGS: ComfyTimings = {
  httpTimeoutMs: 30_000,
  downloadIdleMs: 60_000,
  connectTimeoutMs: 30_000,
  pollMs: 5_000,
  pollWhileDownMs: 1_000,
  maxDownMs: 60_000,
  cancelWaitMs: 8_000,
}

/** Where ComfyUI is: the base URL without credentials (safe to print) and the auth header they make. */
export interface ComfyEndpoint {
  base: URL
  /** `COMFYUI_URL` with any user and password removed: the only form that goes into messages. */
  display: string
  headers: Record<string, string>
}

/** Parses COMFYUI_URL; user and password in it become a Basic Authorization header and never reach a message. */
export function comfyEndpoint(url: string): ComfyEndpoint {
  const base = new URL(url)
  const headers: Record<string, string> = {}
  if (base.username || base.password) {
    const creds = `${decodeURIComponent(base.username)}:${decodeURIComponent(base.password)}`
    headers.authorization = `Basic ${Buffer.from(creds).toString('base64')}`
    base.username = ''
    base.password = ''
  }
  base.search = ''
  base.hash = ''
  if (!base.pathname.endsWith('/')) base.pathname += '/'
  return { base, display: base.toString().replace(/\/$/, ''), headers }
}

export const ERR_CODE = 'COMFYUI_UNAVAILABLE'

/** ComfyUI did not answer or answered with a server error: worth another attempt. */
export const unavailable = (ep: ComfyEndpoint, what: string, cause?: unknown): RetryableError =>
  new RetryableError(`ComfyUI at COMFYUI_URL=${ep.display} ${what}`, { code: ERR_CODE, cause })

export const causeText = (err: unknown): string => {
  const e = err as { cause?: { code?: string; message?: string }; code?: string; message?: string }
  return e?.cause?.code ?? e?.code ?? e?.cause?.message ?? e?.message ?? String(err)
}

/**
 * A request to ComfyUI. `timeoutMs` bounds the wait for the response headers, and with `wholeBody` the
 * body too (JSON answers); a download's body is bounded by its own idle watchdog instead, so a large
 * video is not cut off. No Origin header is ever sent (ComfyUI's origin check, engines.md 1.1).
 */
export async function comfyFetch(
  ep: ComfyEndpoint,
  method: 'GET' | 'POST',
  route: string,
  opts: { body?: unknown; timeoutMs: number; signal?: AbortSignal; wholeBody?: boolean },
): Promise<{ res: Response; text?: string }> {
  const url = new URL(route.replace(/^\//, ''), ep.base)
  const timeout = new AbortController()
  const timer = setTimeout(() => timeout.abort(new Error('timeout')), opts.timeoutMs)
  const signal = opts.signal ? AbortSignal.any([opts.signal, timeout.signal]) : timeout.signal
  try {
    const res = await fetch(url, {
      method,
      headers: {
        ...ep.headers,
        ...(opts.body === undefined ? {} : { 'content-type': 'application/json' }),
      },
      body: opts.body === undefined ? undefined : JSON.stringify(opts.body),
      signal,
    })
    // A proxy in front of a restarting ComfyUI answers 502/503/504; ComfyUI itself 500 on a crash.
    if (res.status >= 500) {
      await res.body?.cancel().catch(() => {})
      throw unavailable(ep, `answered ${res.status} to ${method} ${routeName(route)} (restarting?)`)
    }
    return { res, text: opts.wholeBody ? await res.text() : undefined }
  } catch (err) {
    if (err instanceof RetryableError) throw err
    if (opts.signal?.aborted) throw err
    if (timeout.signal.aborted)
      throw unavailable(
        ep,
        `did not answer ${method} ${routeName(route)} within ${Math.round(opts.timeoutMs / 1000)} s`,
        err,
      )
    throw unavailable(ep, `is unreachable (${causeText(err)}) on ${method} ${routeName(route)}`, err)
  } finally {
    clearTimeout(timer)
  }
}

/** The route without its query, for messages. */
const routeName = (route: string): string => `/${route.replace(/^\//, '').split('?')[0]}`

export async function comfyJson<T>(
  ep: ComfyEndpoint,
  method: 'GET' | 'POST',
  route: string,
  opts: { body?: unknown; timeoutMs: number },
): Promise<{ status: number; json: T }> {
  const { res, text } = await comfyFetch(ep, method, route, { ...opts, wholeBody: true })
  try {
    return { status: res.status, json: JSON.parse(text ?? '') as T }
  } catch (err) {
    throw unavailable(
      ep,
      `sent a body that is not JSON (${res.status}) on ${method} ${routeName(route)}`,
      err,
    )
  }
}

/** A POST whose answer has no body worth reading (/queue, /interrupt answer 200 and nothing). */
export async function comfyPost(
  ep: ComfyEndpoint,
  route: string,
  body: unknown,
  timeoutMs: number,
): Promise<void> {
  await comfyFetch(ep, 'POST', route, { body, timeoutMs, wholeBody: true })
}

export interface HistoryEntry {
  outputs?: Record<string, unknown>
  status?: { status_str?: string; completed?: boolean; messages?: [string, Record<string, unknown>][] }
}

export interface QueueState {
  running: boolean
  pending: boolean
}

export async function queueState(
  ep: ComfyEndpoint,
  promptId: string,
  timings: ComfyTimings,
): Promise<QueueState> {
  const { json } = await comfyJson<{ queue_running?: unknown[][]; queue_pending?: unknown[][] }>(
    ep,
    'GET',
    'queue',
    { timeoutMs: timings.httpTimeoutMs },
  )
  const has = (items: unknown[][] | undefined) => (items ?? []).some((item) => item?.[1] === promptId)
  return { running: has(json.queue_running), pending: has(json.queue_pending) }
}

export async function historyOf(
  ep: ComfyEndpoint,
  promptId: string,
  timings: ComfyTimings,
): Promise<HistoryEntry | null> {
  const { json } = await comfyJson<Record<string, HistoryEntry>>(
    ep,
    'GET',
    `history/${encodeURIComponent(promptId)}`,
    { timeoutMs: timings.httpTimeoutMs },
  )
  return json[promptId] ?? null
}
