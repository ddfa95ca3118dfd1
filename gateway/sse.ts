import type { HttpBindings } from '@hono/node-server'
import type { Context } from 'hono'
import { streamSSE } from 'hono/streaming'
import * as v from 'valibot'
import { isTerminal } from '../schema/common.ts'
import type { Config } from '../schema/config.ts'
import type { JobRow } from '../schema/db/tables.ts'
import { type ProgressEvent, SeqAfterText } from '../schema/events.ts'
import { toFieldIssues } from '../schema/issues.ts'
import { ApiError, BackendUnavailableError } from './errors.ts'
import { type EventHub, SUBSCRIBE_TIMEOUT_MS, type Subscription, wireJson } from './hub.ts'
import type { GatewayMetrics } from './metrics.ts'
import { queryValue } from './query.ts'
import { type StreamCounter, tooManyStreams } from './rate-limit.ts'

/**
 * The SSE route, `GET /api/jobs/:jobId/events`: replay (`Last-Event-ID` or `?after=`), then live, until the
 * job's terminal event. The one rule it keeps everywhere: a stream holds its slot (StreamCounter) and its
 * `gateway_sse_streams` count only while it is really open, and gives both back, once, on every way out.
 */

/** What the SSE route needs from the gateway. */
export interface SseDeps {
  config: Config
  hub: EventHub
  metrics: GatewayMetrics
  /** Open WebSockets and SSE streams per token (shared with the WebSocket server). */
  streams: StreamCounter
}

/** Events waiting for a client that reads slower than they come; past it the client is dropped. */
const MAX_QUEUED_EVENTS = 10_000
/** A write the client has not taken in this long means it has stopped reading: it is dropped. */
const WRITE_TIMEOUT_MS = 30_000
const KEEP_ALIVE_MS = 15_000

type EndReason = 'done' | 'gone' | 'slow_client' | 'shutdown'

/**
 * Aborts when the client's connection closes, whenever that was: the Node response's `close` (already
 * closed counts too), else the Request's signal (`app.request()`). Hono's own abort hook is not enough: it
 * fires only if the connection closes after the server has started to read the body, and it fires once,
 * for listeners registered by then.
 */
export function connectionGone(c: Context): { signal: AbortSignal; dispose(): void } {
  const ac = new AbortController()
  const onClose = () => ac.abort()
  const outgoing = (c.env as Partial<HttpBindings> | undefined)?.outgoing
  const request = c.req.raw.signal
  if (outgoing?.destroyed || outgoing?.socket?.destroyed || request.aborted) ac.abort()
  outgoing?.once('close', onClose)
  request.addEventListener('abort', onClose, { once: true })
  return {
    signal: ac.signal,
    dispose: () => {
      outgoing?.off('close', onClose)
      request.removeEventListener('abort', onClose)
    },
  }
}

/**
 * Where a stream resumes: `Last-Event-ID` (what EventSource sends on reconnect, to the URL it first
 * opened, so it wins over that URL's `?after=`) or `?after=`; a 400 naming `after` otherwise.
 */
export function resumePoint(c: Context): number | undefined {
  const raw = c.req.header('last-event-id') ?? queryValue(c, 'after')
  if (raw === undefined) return undefined
  const parsed = v.safeParse(SeqAfterText, raw)
  if (parsed.success) return parsed.output
  const message = toFieldIssues(parsed.issues)[0]?.message ?? 'is invalid'
  throw new ApiError(400, 'invalid_query', `invalid query: after (or Last-Event-ID) ${message}`, [
    { path: 'after', message },
  ])
}

/**
 * Takes one of `owner`'s stream slots (a 429 past MAX_STREAMS_PER_TOKEN) and counts the stream in
 * `gateway_sse_streams`; returns the give-back, which acts once however often it is called.
 */
export function holdStream(deps: SseDeps, owner: string | null): () => void {
  const { config, metrics, streams } = deps
  const authRequired = config.apiTokens.size > 0
  const key = owner ?? 'anonymous'
  if (authRequired && !streams.acquire(key)) throw tooManyStreams(config.maxStreamsPerToken)
  metrics.sseStreams.inc()
  let held = true
  return () => {
    if (!held) return
    held = false
    metrics.sseStreams.dec()
    if (authRequired) streams.release(key)
  }
}

/** Streams the events of `row`, a job the caller may see. */
export async function sseEvents(
  c: Context,
  row: JobRow,
  owner: string | null,
  deps: SseDeps,
): Promise<Response> {
  const { hub, metrics } = deps
  const after = resumePoint(c)
  const giveBack = holdStream(deps, owner)
  const gone = connectionGone(c)

  const queued: ProgressEvent[] = []
  let reason: EndReason | undefined
  let wake: (() => void) | undefined
  const ended = new AbortController()
  const end = (why: EndReason) => {
    reason ??= why
    ended.abort()
    wake?.()
  }
  gone.signal.addEventListener('abort', () => end('gone'), { once: true })

  // Subscribed before the response starts: a Redis that fails or stalls is a 503, not a stream that hangs.
  let sub: Subscription
  try {
    sub = await hub.subscribe(
      row.id,
      after,
      (event) => {
        if (queued.length >= MAX_QUEUED_EVENTS) {
          metrics.dropped.inc({ transport: 'sse', reason: 'slow_client' })
          end('slow_client')
        } else queued.push(event)
        wake?.()
      },
      {
        signal: AbortSignal.any([gone.signal, AbortSignal.timeout(SUBSCRIBE_TIMEOUT_MS)]),
        onEnd: () => end('shutdown'),
      },
    )
  } catch {
    gone.dispose()
    giveBack()
    // 499: the client closed the request (nobody reads this answer; the metrics do).
    if (gone.signal.aborted) return new Response(null, { status: 499 })
    throw new BackendUnavailableError('Redis', 'the event log did not answer; retry shortly')
  }

  const outgoing = (c.env as Partial<HttpBindings> | undefined)?.outgoing
  return streamSSE(c, async (stream) => {
    stream.onAbort(() => end('gone'))
    let writing = 0
    /** One write, bounded: false when the stream ended meanwhile or the client took too long to read it. */
    const write = async (text: string): Promise<boolean> => {
      if (ended.signal.aborted) return false
      writing++
      let timer: NodeJS.Timeout | undefined
      let onEnded: (() => void) | undefined
      try {
        // Hono's write waits for the reader: on a connection nobody reads any more, for ever.
        const outcome = await Promise.race([
          stream.write(text).then(() => 'written' as const),
          new Promise<'ended'>((resolve) => {
            onEnded = () => resolve('ended')
            ended.signal.addEventListener('abort', onEnded, { once: true })
          }),
          new Promise<'timeout'>((resolve) => {
            timer = setTimeout(() => resolve('timeout'), WRITE_TIMEOUT_MS)
          }),
        ])
        if (outcome === 'timeout') {
          metrics.dropped.inc({ transport: 'sse', reason: 'slow_client' })
          end('slow_client')
        }
        return outcome === 'written' && !ended.signal.aborted
      } finally {
        clearTimeout(timer)
        if (onEnded) ended.signal.removeEventListener('abort', onEnded)
        writing--
      }
    }
    const keepAlive = setInterval(() => void write(': keep-alive\n\n'), KEEP_ALIVE_MS)
    try {
      // Resumed at the end of a finished job: nothing is due, the stream ends at once.
      if (sub.finished && queued.length === 0) end('done')
      while (!ended.signal.aborted) {
        const event = queued.shift()
        if (!event) {
          await new Promise<void>((resolve) => {
            wake = resolve
          })
          wake = undefined
          continue
        }
        if (!(await write(`event: progress\ndata: ${wireJson(event)}\nid: ${event.seq}\n\n`))) break
        metrics.forwarded.inc({ transport: 'sse' })
        if (isTerminal(event.status) && queued.length === 0) end('done')
      }
    } finally {
      clearInterval(keepAlive)
      sub.close()
      gone.dispose()
      giveBack()
      // A clean end (streamSSE closes the stream after this) unless the client is gone or stuck: a write
      // still waiting would hold the connection, and gateway shutdown with it, for ever.
      if (reason === 'gone' || reason === 'slow_client' || writing > 0) {
        if (outgoing) outgoing.destroy()
        else stream.abort()
      }
    }
  })
}
