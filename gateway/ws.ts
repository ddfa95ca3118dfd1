/**
 * `GET /ws`: one socket that follows any number of jobs. The upgrade is a request of the gateway's Hono
 * app like any other (origin, wrong-token limit and auth are its middleware); @hono/node-ws makes the
 * socket, and this file holds the socket's protocol: subscriptions, their caps, slow and noisy clients.
 */
import type { IncomingMessage, Server } from 'node:http'
import { STATUS_CODES } from 'node:http'
import type { Duplex } from 'node:stream'
import type { HttpBindings } from '@hono/node-server'
import { createNodeWebSocket } from '@hono/node-ws'
import type { Hono } from 'hono'
import type { Logger } from 'pino'
import * as v from 'valibot'
import type { WebSocket } from 'ws'
import { JobId } from '../schema/common.ts'
import { type ProgressEvent, WsClientMessage, type WsServerNotice } from '../schema/events.ts'
import { describeIssues, toFieldIssues } from '../schema/issues.ts'
import { ApiError } from './errors.ts'
import { type EventHub, SUBSCRIBE_TIMEOUT_MS, type Subscription, wireJson } from './hub.ts'
import type { GatewayMetrics } from './metrics.ts'
import { queryValue } from './query.ts'
import { RateLimiter, type StreamCounter, tooManyStreams } from './rate-limit.ts'
import type { JobStore } from './store.ts'

/** The WebSocket route (the one path whose upgrades are answered; others are dropped). */
export const WS_PATH = '/ws'
/** Close code for a client too slow to take its events (in the private-use range). */
export const CLOSE_SLOW_CLIENT = 4008
export const CLOSE_POLICY = 1008
const MAX_SUBSCRIPTIONS = 200
const PING_INTERVAL_MS = 30_000
/** How long a closing socket may take to finish the close handshake before it is destroyed (ws: 30 s). */
const CLOSE_TIMEOUT_MS = 5000
const MAX_PAYLOAD_BYTES = 64 * 1024
/** ws' own rule for a handshake's key (RFC 6455 4.1: 16 random bytes, base64). */
const WS_KEY = /^[+/0-9A-Za-z]{22}==$/

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

/**
 * A Hono response as raw HTTP/1.1 on an upgrade socket, body and headers included. @hono/node-ws answers
 * a refused upgrade with its status alone (an empty body): clients need the error's code and Retry-After.
 */
async function rawResponse(res: Response): Promise<Buffer> {
  const body = Buffer.from(await res.arrayBuffer())
  const lines = [`HTTP/1.1 ${res.status} ${STATUS_CODES[res.status] ?? ''}`]
  res.headers.forEach((value, name) => {
    if (name !== 'connection' && name !== 'content-length') lines.push(`${name}: ${value}`)
  })
  lines.push('connection: close', `content-length: ${body.length}`, '', '')
  return Buffer.concat([Buffer.from(lines.join('\r\n'), 'latin1'), body])
}

export interface WsOptions {
  /** The app the route is added to: every upgrade goes through its middleware first. */
  app: Hono
  hub: EventHub
  store: JobStore
  metrics: GatewayMetrics
  logger: Logger
  /** With API tokens a socket sees only its token's jobs, and holds one of its stream slots. */
  authRequired: boolean
  streams: StreamCounter
  maxStreamsPerToken: number
  limits?: Partial<WsLimits>
}

export interface WebSockets {
  /** Answers the upgrades of `server` (call once it is created). */
  attach(server: Server): void
  /** Closes every socket with 1001. */
  close(): void
  clients(): number
}

/**
 * Adds `GET /ws` to `opts.app`. Client messages: `{op: "subscribe", jobId, after?}` and
 * `{op: "unsubscribe", jobId}`; `?jobId=` subscribes at connect.
 *
 * @example const ws = webSockets({ app, hub, store, metrics, logger, authRequired, streams, maxStreamsPerToken })
 * ws.attach(server)
 */
export function webSockets(opts: WsOptions): WebSockets {
  const { app, hub, store, metrics, logger } = opts
  const limits: WsLimits = { ...WS_LIMITS, ...opts.limits }
  const { wss, upgradeWebSocket } = createNodeWebSocket({ app })
  // node-ws makes its server with ws' defaults (100 MiB messages, a 30 s close handshake); ws reads these
  // options at each upgrade. closeTimeout is in ws (8.18+) but not yet in its types.
  Object.assign(wss.options, { maxPayload: MAX_PAYLOAD_BYTES, closeTimeout: CLOSE_TIMEOUT_MS })
  const forwarded = metrics.forwarded.labels('ws')
  /** Upgrades the app accepted: only those become sockets; the others get the app's answer. */
  const accepted = new WeakSet<IncomingMessage>()

  app.get(WS_PATH, async (c) => {
    const incoming = (c.env as Partial<HttpBindings> | undefined)?.incoming
    if (incoming === undefined || c.req.header('upgrade')?.toLowerCase() !== 'websocket') return c.notFound()
    // Refused here, not by ws: node-ws waits for the socket from the moment it is asked to upgrade, and a
    // handshake that ws refuses would leave that wait (and this request) pending for ever.
    const version = c.req.header('sec-websocket-version')
    if (!WS_KEY.test(c.req.header('sec-websocket-key') ?? '') || (version !== '13' && version !== '8'))
      throw new ApiError(400, 'invalid_request', 'invalid WebSocket handshake (Sec-WebSocket-Key/Version)')
    const owner = c.get('owner') ?? null
    // Read before the upgrade, so a `jobId` given twice is a 400, not a socket for the first one.
    const jobId = queryValue(c, 'jobId') ?? null
    if (owner !== null && !opts.streams.acquire(owner)) throw tooManyStreams(opts.maxStreamsPerToken)
    // The socket, not the WebSocket: a handshake that fails or is abandoned never makes one.
    if (owner !== null) onSocketGone(incoming.socket, () => opts.streams.release(owner))
    accepted.add(incoming)
    let socket: Connection | undefined
    return upgradeWebSocket(
      c,
      {
        onOpen: (_event, ws) => {
          socket = onConnection(ws.raw as WebSocket, owner, jobId)
        },
        onMessage: (event) => socket?.message(event.data),
        onClose: () => socket?.closed(),
      },
      // Errors of our handlers, and of the socket (node-ws reports those only where ErrorEvent exists).
      { onError: (err) => logger.debug({ err }, 'websocket error') },
    )
  })

  type Connection = { message(data: unknown): void; closed(): void }

  function onConnection(ws: WebSocket, owner: string | null, initialJob: string | null): Connection {
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
      if (!row || (opts.authRequired && row.owner !== owner))
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
    const inbound = new RateLimiter(limits.messagesPerSecond, limits.messageBurst)
    const overRate = (): boolean => inbound.take('socket') > 0

    const message = (data: unknown) => {
      // Closing (slow, over the rate, shutting down): nothing more is answered or acted on.
      if (ws.readyState !== ws.OPEN) return
      if (overRate()) {
        ws.close(CLOSE_POLICY, `over ${limits.messagesPerSecond} messages per second`)
        ws.pause()
        return
      }
      // node-ws hands text frames over as strings, binary ones as ArrayBuffers (never a valid message).
      if (typeof data !== 'string')
        return notice({ op: 'error', error: { code: 'invalid_message', message: 'a message is JSON text' } })
      let raw: unknown
      try {
        raw = JSON.parse(data)
      } catch {
        return notice({
          op: 'error',
          error: { code: 'invalid_message', message: 'the message is not valid JSON' },
        })
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
    }
    const closed = () => {
      gone.abort()
      clearInterval(ping)
      for (const sub of subs.values()) sub.close()
      subs.clear()
      metrics.websockets.dec()
    }
    if (initialJob !== null) {
      if (v.is(JobId, initialJob)) void safely(initialJob, subscribe(initialJob, undefined))
      else notice({ op: 'error', error: { code: 'invalid_message', message: 'jobId: invalid job id' } })
    }
    return { message, closed }
  }

  return {
    attach(server) {
      server.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) => {
        upgrade(req, socket, head).catch((err: unknown) => {
          logger.warn({ err }, 'websocket upgrade failed')
          socket.destroy()
        })
      })
    },
    close: () => {
      for (const client of wss.clients) client.close(1001, 'gateway shutting down')
      wss.close()
    },
    clients: () => wss.clients.size,
  }

  /** node-ws's `injectWebSocket`, but a refusal is answered in full (see `rawResponse`). */
  async function upgrade(req: IncomingMessage, socket: Duplex, head: Buffer): Promise<void> {
    // A client that resets while the app decides must not become an unhandled 'error'.
    socket.on('error', () => {})
    const url = new URL(req.url ?? '/', 'http://localhost')
    if (url.pathname !== WS_PATH) return void socket.destroy()
    const headers = new Headers()
    for (const [name, value] of Object.entries(req.headers))
      for (const one of Array.isArray(value) ? value : value === undefined ? [] : [value])
        headers.append(name, one)
    const env: HttpBindings = { incoming: req, outgoing: undefined as never }
    const res = await app.request(url, { headers }, env)
    if (!accepted.has(req)) return void socket.end(await rawResponse(res))
    accepted.delete(req)
    wss.handleUpgrade(req, socket, head, (ws) => wss.emit('connection', ws, req))
  }
}
