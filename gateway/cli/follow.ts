import WebSocket from 'ws'
import type { JobStatusBody } from '../../schema/api.ts'
import { isTerminal } from '../../schema/common.ts'
import type { ProgressEvent } from '../../schema/events.ts'
import {
  ApiRequestError,
  ConnectionError,
  describeNetworkError,
  errorFromResponse,
  type GatewayClient,
} from './client.ts'

export type Transport = 'ws' | 'sse'

export interface ReconnectPolicy {
  /** First delay after a drop; doubles per failed try, with jitter, up to `maxDelayMs`. */
  baseDelayMs: number
  maxDelayMs: number
  /** Give up when no connection has made progress for this long. */
  giveUpMs: number
  /** A connection silent for this long (no event, no ping, no keep-alive) is taken as dead. */
  idleMs: number
  /** When a reconnect finds the job finished, how long to wait for its final event before using the stored state. */
  terminalGraceMs: number
}

export const DEFAULT_RECONNECT: ReconnectPolicy = {
  baseDelayMs: 250,
  maxDelayMs: 5_000,
  giveUpMs: 60_000,
  idleMs: 75_000,
  terminalGraceMs: 3_000,
}

export interface FollowOptions {
  client: GatewayClient
  jobId: string
  transport: Transport
  /** Each new event, once, in seq order. */
  onEvent: (event: ProgressEvent) => void
  /** A connection was lost and will be retried. */
  onReconnect?: (info: { reason: string; delayMs: number; attempt: number }) => void
  signal?: AbortSignal
  reconnect?: Partial<ReconnectPolicy>
}

export type FollowResult = { final: ProgressEvent } | { aborted: true }

type Outcome =
  | { kind: 'terminal' }
  | { kind: 'dropped'; reason: string; opened: boolean }
  | { kind: 'fatal'; error: Error }
  | { kind: 'stopped' }

type Deliver = (event: ProgressEvent) => boolean

/** The stored state of a job as an event (for a job that is already over). */
export const eventFromStatus = (s: JobStatusBody): ProgressEvent => ({
  jobId: s.jobId,
  status: s.status,
  progress: s.progress,
  message: s.message,
  timestamp: s.finishedAt ?? s.updatedAt,
  seq: Math.max(1, s.seq),
  type: s.type,
  attempt: s.attempt,
})

const looksLikeEvent = (x: unknown): x is ProgressEvent => {
  const e = x as Partial<ProgressEvent> | null
  return (
    typeof e === 'object' &&
    e !== null &&
    typeof e.jobId === 'string' &&
    typeof e.status === 'string' &&
    typeof e.progress === 'number' &&
    typeof e.seq === 'number'
  )
}

const sleep = (ms: number, signal?: AbortSignal) =>
  new Promise<void>((resolve) => {
    if (signal?.aborted) return resolve()
    const done = () => {
      clearTimeout(timer)
      signal?.removeEventListener('abort', done)
      resolve()
    }
    const timer = setTimeout(done, ms)
    signal?.addEventListener('abort', done, { once: true })
  })

/**
 * Follows a job until its terminal event: the current state first, then every event live. A dropped
 * connection is retried with exponential backoff and resumed after the last seq seen (WebSocket
 * `{"op":"subscribe","after":seq}`, SSE `Last-Event-ID`), so each event is reported once, in order.
 * Throws ApiRequestError (unknown job, bad token) or ConnectionError (gateway gone for `giveUpMs`).
 */
export async function followJob(o: FollowOptions): Promise<FollowResult> {
  const policy = { ...DEFAULT_RECONNECT, ...o.reconnect }
  const { client, jobId } = o
  let last: ProgressEvent | undefined
  let final: ProgressEvent | undefined
  let newEvents = 0
  const deliver: Deliver = (event) => {
    if (event.jobId !== jobId || (last && event.seq <= last.seq)) return false
    last = event
    newEvents++
    o.onEvent(event)
    if (isTerminal(event.status)) final = event
    return final !== undefined
  }

  const initial = await client.status(jobId, o.signal)
  if (isTerminal(initial.status)) {
    deliver(eventFromStatus(initial))
    return { final: final ?? eventFromStatus(initial) }
  }

  const open = o.transport === 'sse' ? openSse : openWs
  let known: JobStatusBody | undefined
  let failures = 0
  let lastProgressAt = Date.now()
  for (;;) {
    let outcome: Outcome | undefined
    if (failures > 0) {
      // Between tries, the REST API says whether the gateway is back and whether the job is over.
      try {
        known = await client.status(jobId, o.signal)
      } catch (err) {
        if (o.signal?.aborted) return { aborted: true }
        if (!(err instanceof ConnectionError || (err instanceof ApiRequestError && err.status >= 500)))
          throw err
        outcome = {
          kind: 'dropped',
          reason: err instanceof ConnectionError ? err.detail : err.message,
          opened: false,
        }
      }
    }
    if (outcome === undefined) {
      const stop = new AbortController()
      const signal = o.signal ? AbortSignal.any([o.signal, stop.signal]) : stop.signal
      // A job found finished whose final event no longer replays (its log expired): end on the stored state.
      const grace =
        known && isTerminal(known.status) ? setTimeout(() => stop.abort(), policy.terminalGraceMs) : undefined
      const before = newEvents
      const openedAt = Date.now()
      outcome = await open(client, jobId, last?.seq, deliver, signal, policy.idleMs)
      clearTimeout(grace)
      if (
        outcome.kind === 'dropped' &&
        outcome.opened &&
        (newEvents > before || Date.now() - openedAt > 5_000)
      ) {
        failures = 0
        lastProgressAt = Date.now()
      }
    }

    if (outcome.kind === 'terminal' && final) return { final }
    if (o.signal?.aborted) return { aborted: true }
    if (outcome.kind === 'fatal') throw outcome.error
    if (outcome.kind === 'stopped' && known) {
      const stored = eventFromStatus(known)
      if (!deliver(stored)) {
        o.onEvent(stored)
        final = stored
      }
      return { final: final ?? stored }
    }
    const reason = outcome.kind === 'dropped' ? outcome.reason : 'connection ended'
    if (Date.now() - lastProgressAt > policy.giveUpMs)
      throw new ConnectionError(
        client.baseUrl.href.replace(/\/$/, ''),
        `lost the event stream and could not resume it for ${Math.round(policy.giveUpMs / 1000)}s: ${reason}`,
      )
    failures++
    const delayMs = Math.round(
      Math.min(policy.maxDelayMs, policy.baseDelayMs * 2 ** (failures - 1)) * (0.75 + Math.random() * 0.5),
    )
    o.onReconnect?.({ reason, delayMs, attempt: failures })
    await sleep(delayMs, o.signal)
    if (o.signal?.aborted) return { aborted: true }
  }
}

/** One WebSocket connection: `?jobId=` for the first, `{"op":"subscribe","after":seq}` to resume. */
function openWs(
  client: GatewayClient,
  jobId: string,
  after: number | undefined,
  deliver: Deliver,
  signal: AbortSignal,
  idleMs: number,
): Promise<Outcome> {
  return new Promise((resolve) => {
    const url = client.wsUrl('ws')
    if (after === undefined) url.searchParams.set('jobId', jobId)
    const ws = new WebSocket(url, { headers: client.headers(), handshakeTimeout: 10_000 })
    let opened = false
    let settled = false
    let idle: NodeJS.Timeout | undefined
    const settle = (outcome: Outcome) => {
      if (settled) return
      settled = true
      clearTimeout(idle)
      signal.removeEventListener('abort', onAbort)
      if (outcome.kind === 'terminal' && ws.readyState === WebSocket.OPEN) ws.close(1000)
      else if (ws.readyState !== WebSocket.CLOSED) ws.terminate()
      resolve(outcome)
    }
    const onAbort = () => settle({ kind: 'stopped' })
    if (signal.aborted) return onAbort()
    signal.addEventListener('abort', onAbort, { once: true })
    const bump = () => {
      clearTimeout(idle)
      idle = setTimeout(
        () => settle({ kind: 'dropped', reason: `nothing heard for ${Math.round(idleMs / 1000)}s`, opened }),
        idleMs,
      )
    }
    bump()

    ws.on('open', () => {
      opened = true
      bump()
      if (after !== undefined) ws.send(JSON.stringify({ op: 'subscribe', jobId, after }))
    })
    ws.on('ping', bump)
    ws.on('message', (data) => {
      bump()
      let msg: unknown
      try {
        msg = JSON.parse(String(data))
      } catch {
        return
      }
      const notice = msg as { op?: string; error?: { code?: string; message?: string } }
      if (notice.op === 'error') {
        const code = notice.error?.code ?? 'error'
        const message = notice.error?.message ?? 'the gateway refused the subscription'
        if (code === 'unavailable') settle({ kind: 'dropped', reason: message, opened })
        else
          settle({
            kind: 'fatal',
            error:
              code === 'not_found'
                ? new ApiRequestError(404, code, `no job "${jobId}"`)
                : new ApiRequestError(400, code, message),
          })
        return
      }
      if (notice.op !== undefined) return
      if (looksLikeEvent(msg) && deliver(msg)) settle({ kind: 'terminal' })
    })
    ws.on('unexpected-response', (_req, res) => {
      const chunks: Buffer[] = []
      res.on('data', (c: Buffer) => chunks.push(c))
      res.on('error', () => {})
      res.on('end', () => {
        const status = res.statusCode ?? 0
        const error = errorFromResponse(status, res.statusMessage ?? '', Buffer.concat(chunks).toString())
        if (status >= 500 || status === 429)
          settle({ kind: 'dropped', reason: `${status}: ${error.message}`, opened })
        else settle({ kind: 'fatal', error })
      })
    })
    ws.on('error', (err) => settle({ kind: 'dropped', reason: describeNetworkError(err), opened }))
    ws.on('close', (code, reason) =>
      settle({
        kind: 'dropped',
        reason: `connection closed (${code}${reason.length ? ` ${reason.toString()}` : ''})`,
        opened,
      }),
    )
  })
}

/** One Server-Sent Events stream: `GET /api/jobs/:id/events`, resumed with `Last-Event-ID`. */
async function openSse(
  client: GatewayClient,
  jobId: string,
  after: number | undefined,
  deliver: Deliver,
  signal: AbortSignal,
  idleMs: number,
): Promise<Outcome> {
  const ctl = new AbortController()
  const onAbort = () => ctl.abort()
  if (signal.aborted) return { kind: 'stopped' }
  signal.addEventListener('abort', onAbort, { once: true })
  let idle: NodeJS.Timeout | undefined
  let idleFired = false
  const bump = () => {
    clearTimeout(idle)
    idle = setTimeout(() => {
      idleFired = true
      ctl.abort()
    }, idleMs)
  }
  let opened = false
  try {
    bump()
    const res = await fetch(client.url(`api/jobs/${encodeURIComponent(jobId)}/events`), {
      headers: client.headers({
        accept: 'text/event-stream',
        ...(after === undefined ? {} : { 'last-event-id': String(after) }),
      }),
      signal: ctl.signal,
    })
    if (!res.ok || !res.body) {
      const error = errorFromResponse(res.status, res.statusText, await res.text())
      if (res.status >= 500 || res.status === 429)
        return { kind: 'dropped', reason: `${res.status}: ${error.message}`, opened }
      return { kind: 'fatal', error }
    }
    opened = true
    const reader = res.body.pipeThrough(new TextDecoderStream()).getReader()
    let buffer = ''
    let data: string[] = []
    let eventName = ''
    for (;;) {
      const { value, done } = await reader.read()
      if (done) return { kind: 'dropped', reason: 'the event stream ended', opened }
      bump()
      buffer += value
      for (;;) {
        const m = /\r\n|\r|\n/.exec(buffer)
        // A lone CR at the end may be half of a CRLF: wait for the next chunk.
        if (!m || (m[0] === '\r' && m.index === buffer.length - 1)) break
        const line = buffer.slice(0, m.index)
        buffer = buffer.slice(m.index + m[0].length)
        if (line === '') {
          const payload = data.join('\n')
          const name = eventName || 'message'
          data = []
          eventName = ''
          if (!payload || (name !== 'progress' && name !== 'message')) continue
          let msg: unknown
          try {
            msg = JSON.parse(payload)
          } catch {
            continue
          }
          if (looksLikeEvent(msg) && deliver(msg)) return { kind: 'terminal' }
          continue
        }
        if (line.startsWith(':')) continue
        const colon = line.indexOf(':')
        const field = colon < 0 ? line : line.slice(0, colon)
        let val = colon < 0 ? '' : line.slice(colon + 1)
        if (val.startsWith(' ')) val = val.slice(1)
        if (field === 'data') data.push(val)
        else if (field === 'event') eventName = val
      }
    }
  } catch (err) {
    if (signal.aborted) return { kind: 'stopped' }
    return {
      kind: 'dropped',
      reason: idleFired ? `nothing heard for ${Math.round(idleMs / 1000)}s` : describeNetworkError(err),
      opened,
    }
  } finally {
    clearTimeout(idle)
    signal.removeEventListener('abort', onAbort)
    ctl.abort()
  }
}
