import type { Context } from 'hono'
import { streamSSE } from 'hono/streaming'
import { isTerminal } from '../schema/common.ts'
import type { Config } from '../schema/config.ts'
import type { JobRow } from '../schema/db/tables.ts'
import type { ProgressEvent } from '../schema/events.ts'
import { ApiError } from './errors.ts'
import { type EventHub, wireJson } from './hub.ts'
import type { GatewayMetrics } from './metrics.ts'
import type { StreamCounter } from './rate-limit.ts'

/** What the SSE route needs from the gateway. */
export interface SseDeps {
  config: Config
  hub: EventHub
  metrics: GatewayMetrics
  /** Open WebSockets and SSE streams per token (shared with the WebSocket server). */
  streams: StreamCounter
}

/** `GET /api/jobs/:jobId/events` for a job the caller may see: replay (`Last-Event-ID` or `?after=`) then live. */
export function sseEvents(
  c: Context,
  row: JobRow,
  owner: string | null,
  deps: SseDeps,
): Response | Promise<Response> {
  const { config, hub, metrics } = deps
  const authRequired = config.apiTokens.size > 0
  const afterRaw = c.req.header('last-event-id') ?? c.req.query('after')
  const after = afterRaw === undefined ? undefined : Number(afterRaw)
  if (after !== undefined && (!Number.isInteger(after) || after < 0))
    throw new ApiError(400, 'invalid_query', 'invalid query: after must be a non-negative integer', [
      { path: 'after', message: 'must be a non-negative integer' },
    ])
  const streamKey = owner ?? 'anonymous'
  if (authRequired && !deps.streams.acquire(streamKey))
    throw new ApiError(429, 'too_many_streams', `at most ${config.maxStreamsPerToken} open streams per token`)
  return streamSSE(c, async (stream) => {
    metrics.sseStreams.inc()
    const queued: ProgressEvent[] = []
    let wake: (() => void) | undefined
    let done = false
    const sub = await hub.subscribe(row.id, after, (event) => {
      if (queued.length > 10_000) {
        metrics.dropped.inc({ transport: 'sse', reason: 'slow_client' })
        done = true
      } else queued.push(event)
      wake?.()
    })
    stream.onAbort(() => {
      done = true
      wake?.()
    })
    const keepAlive = setInterval(() => void stream.write(': keep-alive\n\n').catch(() => {}), 15_000)
    try {
      while (!done) {
        const event = queued.shift()
        if (!event) {
          await new Promise<void>((r) => (wake = r))
          wake = undefined
          continue
        }
        await stream.writeSSE({ id: String(event.seq), event: 'progress', data: wireJson(event) })
        metrics.forwarded.inc({ transport: 'sse' })
        if (isTerminal(event.status) && queued.length === 0) done = true
      }
    } finally {
      clearInterval(keepAlive)
      sub.close()
      metrics.sseStreams.dec()
      if (authRequired) deps.streams.release(streamKey)
    }
  })
}
