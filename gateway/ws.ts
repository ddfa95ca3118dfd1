import type { IncomingMessage, Server } from 'node:http'
import type { Duplex } from 'node:stream'
import type { Logger } from 'pino'
import * as v from 'valibot'
import { type WebSocket, WebSocketServer } from 'ws'
import { JobId } from '../schema/common.ts'
import { type ProgressEvent, WsClientMessage, type WsServerNotice } from '../schema/events.ts'
import { describeIssues, toFieldIssues } from '../schema/issues.ts'
import { presentedToken, tokenOwner } from './auth.ts'
import { ApiError, rawHttpError } from './errors.ts'
import { type EventHub, SUBSCRIBE_TIMEOUT_MS, type Subscription, wireJson } from './hub.ts'
import type { GatewayMetrics } from './metrics.ts'
import { checkOrigin, type OriginPolicy } from './middleware/origin.ts'
import { wrongTokensLimited } from './middleware/rate-limit.ts'
import { type RateLimiter, type StreamCounter, tooManyStreams } from './rate-limit.ts'
import type { JobStore } from './store.ts'

/** Close code for a client too slow to take its events (in the private-use range). */
export const CLOSE_SLOW_CLIENT = 4008
export const CLOSE_POLICY = 1008
const MAX_SUBSCRIPTIONS = 200
const PING_INTERVAL_MS = 30_000
/** How long a closing socket may take to finish the close handshake before it is destroyed (ws: 30 s). */
const CLOSE_TIMEOUT_MS = 5000

/** The per-socket rules every client is held to. */
export interface WsLimits {
  /** Past this many bytes not yet taken by the client, it is closed with 4008 (nothing more is queued). */
  maxBufferedBytes: number
  /** Inbound messages per second, per socket (token bucket); over it the socket is closed with 1008. */
  messagesPerSecond: number
  /** Messages a socket may send at once (a console subscribing to many jobs at connect). */
  messageBurst: number
}
export const WS_LIMITS: WsLimits = {
  maxBufferedBytes: 4 * 1024 * 1024,
  messagesPerSecond: 50,
  messageBurst: MAX_SUBSCRIPTIONS,
}

/** Calls `fn` once when `socket` closes, or at once if it already has (an upgrade abandoned or refused). */
function onSocketGone(socket: Duplex, fn: () => void): void {
  let called = false
  const once = () => {
    if (called) return
    called = true
    fn()
  }
  socket.once('close', once)
  if (socket.destroyed) once()
}

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
  limits?: Partial<WsLimits>
  /** Wrong tokens per client address: the REST routes' limiter, so an upgrade is no way around it. */
  authFailures?: RateLimiter
}

/** `GET /ws`: subscribe/unsubscribe to any number of jobs over one socket. */
export function attachWebSocket(opts: WsOptions): { close(): void; clients(): number } {
  const { hub, store, metrics, logger, tokens } = opts
  const limits: WsLimits = { ...WS_LIMITS, ...opts.limits }
  // closeTimeout is in ws (8.18+) but not yet in its types: passed through a variable.
  const serverOptions = { noServer: true, maxPayload: 64 * 1024, closeTimeout: CLOSE_TIMEOUT_MS }
  const wss = new WebSocketServer(serverOptions)
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
      const client = req.socket.remoteAddress ?? 'unknown'
      const wait = opts.authFailures?.wait(client) ?? 0
      if (wait > 0) {
        metrics.rateLimited.inc()
        return void socket.end(rawHttpError(wrongTokensLimited(wait), 'Too Many Requests'))
      }
      const given = presentedToken(req.headers.authorization, url.searchParams.get('token') ?? undefined)
      owner = tokenOwner(tokens, given)
      if (owner === null) {
        // As on the REST routes: only a token that was sent and is wrong counts toward the limit.
        if (given !== undefined) opts.authFailures?.take(client)
        const unauthorized = new ApiError(
          401,
          'unauthorized',
          'send Authorization: Bearer <token> or ?token=',
        )
        return void socket.end(rawHttpError(unauthorized, 'Unauthorized'))
      }
    }
    if (owner !== null && !opts.streams.acquire(owner)) {
      return void socket.end(rawHttpError(tooManyStreams(opts.maxStreamsPerToken), 'Too Many Requests'))
    }
    // The socket, not the WebSocket: a handshake that fails or is abandoned never makes one.
    if (owner !== null) onSocketGone(socket, () => opts.streams.release(owner))
    wss.handleUpgrade(req, socket, head, (ws) => {
      onConnection(ws, owner, url.searchParams.get('jobId'))
    })
  })

  function onConnection(ws: WebSocket, owner: string | null, initialJob: string | null): void {
    metrics.websockets.inc()
    const subs = new Map<string, Subscription>()
    let alive = true
    // Aborts pending subscribes when the socket closes.
    const gone = new AbortController()
    const ping = setInterval(() => {
      if (!alive) return ws.terminate()
      alive = false
      if (ws.readyState === ws.OPEN) ws.ping()
    }, PING_INTERVAL_MS)
    ws.on('pong', () => {
      alive = true
    })

    /**
     * Every message to the client goes through here. A client that does not take what it is sent (its
     * bytes pile up in `bufferedAmount`) is closed rather than allowed to grow our memory: events and
     * replies alike, since a client that sends without reading would otherwise queue replies for ever.
     */
    const send = (text: string): 'sent' | 'closed' | 'slow' => {
      if (ws.readyState !== ws.OPEN) return 'closed'
      if (ws.bufferedAmount > limits.maxBufferedBytes) {
        ws.close(CLOSE_SLOW_CLIENT, 'client too slow: reconnect and resume with after=<last seq>')
        return 'slow'
      }
      ws.send(text)
      return 'sent'
    }
    const notice = (msg: WsServerNotice) => void send(JSON.stringify(msg))
    const deliver = (event: ProgressEvent) => {
      const sent = send(wireJson(event))
      if (sent === 'sent') forwarded.inc()
      else metrics.dropped.inc({ transport: 'ws', reason: sent === 'slow' ? 'slow_client' : 'closed' })
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
      const sub = await hub.subscribe(jobId, after, deliver, {
        signal: AbortSignal.any([gone.signal, AbortSignal.timeout(SUBSCRIBE_TIMEOUT_MS)]),
      })
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
        if (gone.signal.aborted) return
        logger.warn({ err: (err as Error).message, jobId }, 'websocket subscribe failed')
        if (ws.readyState === ws.OPEN)
          notice({
            op: 'error',
            jobId,
            error: { code: 'unavailable', message: 'could not subscribe; retry shortly' },
          })
      })

    // Inbound messages: a token bucket per socket. Each one costs work (a Postgres read, a Redis replay)
    // and may earn a reply; a client over the rate is closed, and no longer read (TCP pushes back on it).
    let credit = limits.messageBurst
    let filledAt = Date.now()
    const overRate = (): boolean => {
      const now = Date.now()
      credit = Math.min(limits.messageBurst, credit + ((now - filledAt) / 1000) * limits.messagesPerSecond)
      filledAt = now
      if (credit >= 1) {
        credit -= 1
        return false
      }
      return true
    }

    ws.on('message', (data, isBinary) => {
      // Closing (slow, over the rate, shutting down): nothing more is answered or acted on.
      if (ws.readyState !== ws.OPEN) return
      if (overRate()) {
        ws.close(CLOSE_POLICY, `over ${limits.messagesPerSecond} messages per second`)
        ws.pause()
        return
      }
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
      gone.abort()
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
