import { createParser } from 'eventsource-parser'
import type { ProgressEvent } from '../../schema/events.ts'
import { ReconnectingFetch, type ReconnectingOptions } from '../console/stream.js'
import { type ApiRequestError, errorFromResponse, type GatewayClient } from './client.ts'

export interface SseStreamOptions extends ReconnectingOptions {
  client: GatewayClient
  jobId: string
  /** Every event of the stream (parsed JSON that looks like an event; the caller dedupes by seq). */
  onEvent: (event: ProgressEvent) => void
  /** The gateway refused the stream for good (a 4xx other than 429: bad token, unknown job, ...). */
  onRefused: (error: ApiRequestError) => void
  /** A stream silent for this long (no event, no keep-alive comment) is taken as dead and dropped. */
  idleMs: number
}

/** A parsed message that is an event (the gateway's own; anything else on the stream is skipped). */
export const looksLikeEvent = (x: unknown): x is ProgressEvent => {
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

/**
 * One job's Server-Sent Events (`GET /api/jobs/:id/events`), kept open by the console's reconnect loop
 * (stream.js) like the WebSocket, and resumed after the last seq it delivered with `Last-Event-ID`.
 */
export class SseStream extends ReconnectingFetch {
  private after: number | undefined

  constructor(private readonly o: SseStreamOptions) {
    super(o)
  }

  /** Reads one stream to its end; resolves to what ended it. */
  protected override async read(request: AbortController): Promise<Error | unknown> {
    const { client, jobId, idleMs } = this.o
    let idle: NodeJS.Timeout | undefined
    let silent = false
    const bump = () => {
      clearTimeout(idle)
      idle = setTimeout(() => {
        silent = true
        request.abort()
      }, idleMs)
    }
    const parser = createParser({
      onEvent: ({ event, data }) => {
        if (!data || (event !== undefined && event !== 'progress' && event !== 'message')) return
        let msg: unknown
        try {
          msg = JSON.parse(data)
        } catch {
          return
        }
        if (!looksLikeEvent(msg) || msg.jobId !== jobId) return
        if (this.after === undefined || msg.seq > this.after) this.after = msg.seq
        this.o.onEvent(msg)
      },
    })
    try {
      bump()
      const res = await fetch(client.url(`api/jobs/${encodeURIComponent(jobId)}/events`), {
        headers: client.headers({
          accept: 'text/event-stream',
          ...(this.after === undefined ? {} : { 'last-event-id': String(this.after) }),
        }),
        signal: request.signal,
      })
      if (!res.ok || !res.body) {
        const error = errorFromResponse(res.status, res.statusText, await res.text())
        if (res.status >= 500 || res.status === 429) return new Error(`${res.status}: ${error.message}`)
        this.o.onRefused(error)
        return error
      }
      this.opened()
      const reader = res.body.pipeThrough(new TextDecoderStream()).getReader()
      // Closed while waiting for the next chunk: a read of an aborted body may never settle, so the
      // reader is cancelled and nothing of this stream is left waiting.
      request.signal.addEventListener(
        'abort',
        () => {
          clearTimeout(idle)
          reader.cancel().catch(() => {})
        },
        { once: true },
      )
      for (;;) {
        const { value, done } = await reader.read()
        if (done) return new Error('the event stream ended')
        bump()
        parser.feed(value)
        // An event of this chunk ended the follow (closed the stream).
        if (request.signal.aborted) return undefined
      }
    } catch (err) {
      return silent ? new Error(`nothing heard for ${Math.round(idleMs / 1000)}s`) : err
    } finally {
      clearTimeout(idle)
      request.abort()
    }
  }
}
