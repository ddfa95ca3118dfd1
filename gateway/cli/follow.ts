import type { JobStatusBody } from '../../schema/api.ts'
import { isTerminal } from '../../schema/common.ts'
import type { ProgressEvent } from '../../schema/events.ts'
import { JobStream, type StateInfo, type StreamState } from '../console/stream.js'
import { ApiRequestError, ConnectionError, describeNetworkError, type GatewayClient } from './client.ts'
import { looksLikeEvent, SseStream } from './sse.ts'
import { gatewaySocket } from './ws.ts'

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

/** A connection that lasted this long counts as progress even without new events. */
const HEALTHY_CONNECTION_MS = 5_000

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

/** Why a connection ended, from what the stream reports: a close event, an error event or an error. */
function describeDrop(cause: unknown): string {
  if (cause === undefined) return 'connection ended'
  if (typeof cause !== 'object' || cause === null) return String(cause)
  const c = cause as { code?: unknown; reason?: unknown; error?: unknown }
  if (typeof c.code === 'number')
    return `connection closed (${c.code}${typeof c.reason === 'string' && c.reason ? ` ${c.reason}` : ''})`
  return describeNetworkError(c.error ?? cause)
}

/**
 * Follows a job until its terminal event: the current state first, then every event live, over the
 * console's resumable streams (gateway/console/stream.js): the WebSocket `JobStream` or an `SseStream`.
 * A dropped connection is retried with backoff and resumed after the last seq seen, so each event is
 * reported once, in order; between tries the REST API says whether the job has ended meanwhile.
 * Throws ApiRequestError (unknown job, bad token) or ConnectionError (gateway gone for `giveUpMs`).
 */
export async function followJob(o: FollowOptions): Promise<FollowResult> {
  const policy = { ...DEFAULT_RECONNECT, ...o.reconnect }
  const { client, jobId } = o

  const initial = await client.status(jobId, o.signal)
  if (isTerminal(initial.status)) {
    const final = eventFromStatus(initial)
    o.onEvent(final)
    return { final }
  }
  if (o.signal?.aborted) return { aborted: true }

  return new Promise<FollowResult>((resolve, reject) => {
    let last: ProgressEvent | undefined
    let delivered = 0
    let lastProgressAt = Date.now()
    let openedAt: number | undefined
    let deliveredAtOpen = 0
    let grace: NodeJS.Timeout | undefined
    let done = false

    const finish = (outcome: FollowResult | Error) => {
      if (done) return
      done = true
      clearTimeout(grace)
      o.signal?.removeEventListener('abort', onAbort)
      stream.close()
      if (outcome instanceof Error) reject(outcome)
      else resolve(outcome)
    }
    const onAbort = () => finish({ aborted: true })

    /** Reports an event unless it is another job's or not newer than the last; ends on a terminal one. */
    const deliver = (event: unknown): boolean => {
      if (done || !looksLikeEvent(event) || event.jobId !== jobId || (last && event.seq <= last.seq))
        return false
      last = event
      delivered++
      o.onEvent(event)
      if (isTerminal(event.status)) finish({ final: event })
      return true
    }

    /** Between tries: a job found finished whose final event no longer replays ends on its stored state. */
    const checkStatus = async () => {
      let known: JobStatusBody
      try {
        known = await client.status(jobId, o.signal)
      } catch (err) {
        if (done) return
        // The gateway is still away: the next try says more. A refusal (unknown job, bad token) is final.
        if (err instanceof ConnectionError || (err instanceof ApiRequestError && err.status >= 500)) return
        return finish(err as Error)
      }
      if (done || grace || !isTerminal(known.status)) return
      grace = setTimeout(() => {
        const stored = eventFromStatus(known)
        if (!deliver(stored)) {
          o.onEvent(stored)
          finish({ final: stored })
        }
      }, policy.terminalGraceMs)
    }

    const onState = (state: StreamState, info?: StateInfo) => {
      if (done) return
      if (state === 'open') {
        openedAt = Date.now()
        deliveredAtOpen = delivered
      }
      if (state !== 'waiting') return
      if (
        openedAt !== undefined &&
        (delivered > deliveredAtOpen || Date.now() - openedAt > HEALTHY_CONNECTION_MS)
      )
        lastProgressAt = Date.now()
      openedAt = undefined
      const reason = describeDrop(info?.cause)
      if (Date.now() - lastProgressAt > policy.giveUpMs)
        return finish(
          new ConnectionError(
            client.baseUrl.href.replace(/\/$/, ''),
            `lost the event stream and could not resume it for ${Math.round(policy.giveUpMs / 1000)}s: ${reason}`,
          ),
        )
      o.onReconnect?.({ reason, delayMs: info?.delayMs ?? 0, attempt: info?.attempt ?? 1 })
      void checkStatus()
    }

    const backoff = { min: policy.baseDelayMs, max: policy.maxDelayMs }
    const onRefused = (error: ApiRequestError) => finish(error)
    const stream =
      o.transport === 'sse'
        ? new SseStream({
            client,
            jobId,
            idleMs: policy.idleMs,
            onEvent: deliver,
            onRefused,
            onState,
            backoff,
          })
        : new JobStream({
            url: () => client.wsUrl('ws').href,
            WebSocket: gatewaySocket(client, { idleMs: policy.idleMs, onRefused }),
            onEvent: deliver,
            onNotice: (msg) => {
              if (msg.op !== 'error' || (msg.jobId !== undefined && msg.jobId !== jobId)) return
              const code = msg.error?.code ?? 'error'
              // The gateway could not reach its stores for a moment: JobStream asks again.
              if (code === 'unavailable') return
              finish(
                code === 'not_found'
                  ? new ApiRequestError(404, code, `no job "${jobId}"`)
                  : new ApiRequestError(
                      400,
                      code,
                      msg.error?.message ?? 'the gateway refused the subscription',
                    ),
              )
            },
            onState,
            backoff,
          })
    // From the current state, like the first connection of `?jobId=`; a reconnect resumes after the last seq.
    if (stream instanceof JobStream) stream.follow(jobId, null)
    o.signal?.addEventListener('abort', onAbort, { once: true })
    stream.start()
  })
}
