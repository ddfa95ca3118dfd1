/** The driver's WebSocket to ComfyUI: one client id, reconnected with the same id when it drops. */
import WebSocket from 'ws'
import { backoffDelay } from '../../../schema/backoff.ts'
import type { HandlerContext } from '../../sdk/context.ts'
import { type ComfyEndpoint, type ComfyTimings, causeText, unavailable } from './http.ts'

/** Reconnects to the WebSocket: 250 ms, doubling, at most 5 s apart (until `maxDownMs` gives up). */
const RECONNECT_BACKOFF = { baseMs: 250, maxMs: 5_000 }

export interface ComfyEvent {
  type?: string
  data?: Record<string, unknown>
}

/**
 * The WebSocket of one client id, reconnecting with the same id when it drops (ComfyUI routes a prompt's
 * events to the socket of its client id, and re-sends the running node on reconnect). Binary frames
 * (previews) are dropped unread.
 */
export class ComfySocket {
  private ws: WebSocket | null = null
  private closed = false
  private downSince: number | null = null
  private retry: NodeJS.Timeout | undefined
  private attempts = 0

  constructor(
    private readonly ep: ComfyEndpoint,
    private readonly clientId: string,
    private readonly timings: ComfyTimings,
    private readonly onEvent: (event: ComfyEvent) => void,
    private readonly onFatal: (err: Error) => void,
    private readonly log: HandlerContext['log'],
    private readonly onReconnect: () => void,
  ) {}

  get up(): boolean {
    return this.ws?.readyState === WebSocket.OPEN
  }

  /** How long the socket has been down (0 while up). */
  downForMs(): number {
    return this.downSince === null ? 0 : Date.now() - this.downSince
  }

  /** The first connection: failing it fails the attempt (ComfyUI unreachable). */
  open(): Promise<void> {
    return new Promise((resolve, reject) => {
      const ws = this.dial()
      const fail = (err: Error) => {
        ws.removeAllListeners('open')
        ws.terminate()
        reject(unavailable(this.ep, `refused the WebSocket /ws (${causeText(err)})`, err))
      }
      ws.once('error', fail)
      ws.once('open', () => {
        ws.off('error', fail)
        this.attach(ws)
        resolve()
      })
    })
  }

  private dial(): WebSocket {
    const url = new URL('ws', this.ep.base)
    url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:'
    url.searchParams.set('clientId', this.clientId)
    // No `origin` option: ws then sends no Origin header, which ComfyUI's origin check lets through.
    return new WebSocket(url, {
      headers: this.ep.headers,
      handshakeTimeout: this.timings.connectTimeoutMs,
      perMessageDeflate: false,
    })
  }

  private attach(ws: WebSocket): void {
    this.ws = ws
    this.downSince = null
    this.attempts = 0
    ws.on('message', (data, isBinary) => {
      if (isBinary) return
      let event: ComfyEvent
      try {
        event = JSON.parse(String(data)) as ComfyEvent
      } catch {
        return
      }
      if (event && typeof event === 'object') this.onEvent(event)
    })
    ws.on('error', (err) => this.log.debug(`ComfyUI WebSocket error: ${causeText(err)}`))
    ws.on('close', () => {
      if (this.ws === ws) this.ws = null
      if (this.closed) return
      this.downSince ??= Date.now()
      this.log.warn('ComfyUI WebSocket closed; reconnecting with the same client id and polling /history')
      this.scheduleReconnect()
    })
  }

  private scheduleReconnect(): void {
    if (this.closed) return
    if (this.downForMs() > this.timings.maxDownMs) {
      this.onFatal(
        unavailable(this.ep, `lost its WebSocket for over ${Math.round(this.timings.maxDownMs / 1000)} s`),
      )
      return
    }
    const delay = backoffDelay(++this.attempts, RECONNECT_BACKOFF)
    this.retry = setTimeout(() => {
      const ws = this.dial()
      ws.once('error', () => {
        ws.terminate()
        this.scheduleReconnect()
      })
      ws.once('open', () => {
        ws.removeAllListeners('error')
        this.log.info('ComfyUI WebSocket reconnected')
        this.attach(ws)
        this.onReconnect()
      })
    }, delay)
  }

  close(): void {
    this.closed = true
    clearTimeout(this.retry)
    this.ws?.terminate()
    this.ws = null
  }
}
