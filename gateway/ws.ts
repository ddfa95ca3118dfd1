import type { IncomingMessage, Server } from 'node:http'
import type { Duplex } from 'node:stream'
import type { Logger } from 'pino'
import * as v from 'valibot'
import { type WebSocket, WebSocketServer } from 'ws'
import { JobId } from '../schema/common.ts'
import { type ProgressEvent, WsClientMessage, type WsServerNotice } from '../schema/events.ts'
import { describeIssues, toFieldIssues } from '../schema/issues.ts'
import { presentedToken, tokenOwner } from './auth.ts'
import { rawHttpError } from './errors.ts'
import { type EventHub, type Subscription, wireJson } from './hub.ts'
import type { GatewayMetrics } from './metrics.ts'
import { checkOrigin, type OriginPolicy } from './middleware/origin.ts'
import type { StreamCounter } from './rate-limit.ts'
import type { JobStore } from './store.ts'

/** Close code for a client too slow to take its events (in the private-use range). */
export const CLOSE_SLOW_CLIENT = 4008
export const CLOSE_POLICY = 1008
const MAX_BUFFERED_BYTES = 4 * 1024 * 1024
const MAX_SUBSCRIPTIONS = 200
const PING_INTERVAL_MS = 30_000

export interface WsOptions {
  server: Server
  hub: EventHub
  store: JobStore
  metrics: GatewayMetrics
  logger: Logger
  tokens: Map<string, string>
  streams: StreamCounter
  maxStreamsPerToken: number
  origin: OriginPolicy
}

/** `GET /ws`: subscribe/unsubscribe to any number of jobs over one socket. */
export function attachWebSocket(opts: WsOptions): { close(): void; clients(): number } {
  const { hub, store, metrics, logger, tokens } = opts
  const wss = new WebSocketServer({ noServer: true, maxPayload: 64 * 1024 })
  const forwarded = metrics.forwarded.labels('ws')

  opts.server.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) => {
    const url = new URL(req.url ?? '/', 'http://localhost')
    if (url.pathname !== '/ws') {
      socket.destroy()
      return
    }
    const refused = checkOrigin(req.headers, opts.origin)
    if (refused) return void socket.end(rawHttpError(refused, 'Forbidden'))
    let owner: string | null = null
    if (tokens.size > 0) {
      owner = tokenOwner(
        tokens,
        presentedToken(req.headers.authorization, url.searchParams.get('token') ?? undefined),
      )
      if (owner === null) {
        socket.end(
          'HTTP/1.1 401 Unauthorized\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n{"error":{"code":"unauthorized","message":"send Authorization: Bearer <token> or ?token="}}',
        )
        return
      }
    }
    if (owner !== null && !opts.streams.acquire(owner)) {
      socket.end(
        `HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n{"error":{"code":"too_many_streams","message":"at most ${opts.maxStreamsPerToken} open streams per token"}}`,
      )
      return
    }
    wss.handleUpgrade(req, socket, head, (ws) => {
      if (owner !== null) ws.once('close', () => opts.streams.release(owner))
      onConnection(ws, owner, url.searchParams.get('jobId'))
    })
  })

  function onConnection(ws: WebSocket, owner: string | null, initialJob: string | null): void {
    metrics.websockets.inc()
    const subs = new Map<string, Subscription>()
    let alive = true
    const ping = setInterval(() => {
      if (!alive) return ws.terminate()
      alive = false
      ws.ping()
    }, PING_INTERVAL_MS)
    ws.on('pong', () => {
      alive = true
    })

    const notice = (msg: WsServerNotice) => ws.send(JSON.stringify(msg))
    const deliver = (event: ProgressEvent) => {
      if (ws.readyState !== ws.OPEN) {
        metrics.dropped.inc({ transport: 'ws', reason: 'closed' })
        return
      }
      // A client that cannot keep up is dropped rather than allowed to grow our memory.
      if (ws.bufferedAmount > MAX_BUFFERED_BYTES) {
        metrics.dropped.inc({ transport: 'ws', reason: 'slow_client' })
        ws.close(CLOSE_SLOW_CLIENT, 'client too slow: reconnect and resume with after=<last seq>')
        return
      }
      ws.send(wireJson(event))
      forwarded.inc()
    }

    // Subscriptions being set up count against the cap too: they finish asynchronously. A second
    // subscribe to the same job waits for the first and then replaces it (a client resuming with a new `after`).
    const pending = new Map<string, Promise<unknown>>()
    const setUp = async (jobId: string, after: number | undefined) => {
      const row = await store.get(jobId)
      if (!row || (tokens.size > 0 && row.owner !== owner))
        return notice({ op: 'error', jobId, error: { code: 'not_found', message: 'no such job' } })
      subs.get(jobId)?.close()
      subs.delete(jobId)
      notice({ op: 'subscribed', jobId })
      const sub = await hub.subscribe(jobId, after, deliver)
      if (ws.readyState !== ws.OPEN) sub.close()
      else subs.set(jobId, sub)
    }
    const subscribe = (jobId: string, after: number | undefined): Promise<unknown> => {
      const before = pending.get(jobId)
      if (!before && !subs.has(jobId) && subs.size + pending.size >= MAX_SUBSCRIPTIONS) {
        notice({
          op: 'error',
          jobId,
          error: { code: 'too_many_subscriptions', message: `at most ${MAX_SUBSCRIPTIONS} jobs per socket` },
        })
        return Promise.resolve()
      }
      const next = (before ?? Promise.resolve()).catch(() => {}).then(() => setUp(jobId, after))
      pending.set(jobId, next)
      const clear = () => {
        if (pending.get(jobId) === next) pending.delete(jobId)
      }
      next.then(clear, clear)
      return next
    }
    const safely = (jobId: string, p: Promise<unknown>) =>
      p.catch((err: unknown) => {
        logger.warn({ err: (err as Error).message, jobId }, 'websocket subscribe failed')
        if (ws.readyState === ws.OPEN)
          notice({
            op: 'error',
            jobId,
            error: { code: 'unavailable', message: 'could not subscribe; retry shortly' },
          })
      })

    ws.on('message', (data, isBinary) => {
      let raw: unknown
      try {
        raw = isBinary ? undefined : JSON.parse(data.toString())
      } catch {
        raw = undefined
      }
      const parsed = v.safeParse(WsClientMessage, raw)
      if (!parsed.success)
        return notice({
          op: 'error',
          error: {
            code: 'invalid_message',
            message: describeIssues(toFieldIssues(parsed.issues)) || 'invalid JSON',
          },
        })
      const msg = parsed.output
      if (msg.op === 'subscribe') void safely(msg.jobId, subscribe(msg.jobId, msg.after))
      else {
        subs.get(msg.jobId)?.close()
        subs.delete(msg.jobId)
        notice({ op: 'unsubscribed', jobId: msg.jobId })
      }
    })
    ws.on('close', () => {
      clearInterval(ping)
      for (const sub of subs.values()) sub.close()
      subs.clear()
      metrics.websockets.dec()
    })
    ws.on('error', () => {})
    if (initialJob !== null) {
      if (v.is(JobId, initialJob)) void safely(initialJob, subscribe(initialJob, undefined))
      else notice({ op: 'error', error: { code: 'invalid_message', message: 'jobId: invalid job id' } })
    }
  }

  return {
    close: () => {
      for (const client of wss.clients) client.close(1001, 'gateway shutting down')
      wss.close()
    },
    clients: () => wss.clients.size,
  }
}
