import WebSocket from 'ws'
import type { WebSocketLike } from '../console/stream.js'
import { type ApiRequestError, errorFromResponse, type GatewayClient } from './client.ts'

export interface GatewaySocketOptions {
  /** A socket silent for this long (no event, no ping) is taken as dead and dropped. */
  idleMs: number
  /** The gateway refused the upgrade for good (a 4xx other than 429: bad token, ...). */
  onRefused: (error: ApiRequestError) => void
}

/**
 * The WebSocket class the CLI gives the console's JobStream (which makes its sockets with `new
 * WebSocket(url)`): Node's `ws` with the API token in a header, a watch for silence, and the HTTP answer
 * of a refused upgrade read as an API error. Whatever ends a socket is emitted as its first error, which
 * JobStream reports as the cause of the drop.
 */
export function gatewaySocket(
  client: GatewayClient,
  o: GatewaySocketOptions,
): new (
  url: string,
) => WebSocketLike {
  class GatewaySocket extends WebSocket {
    private idle: NodeJS.Timeout | undefined

    constructor(url: string) {
      super(url, { headers: client.headers(), handshakeTimeout: 10_000 })
      // Errors after JobStream has let go of the socket (it clears onerror) must not be unhandled.
      this.on('error', () => {})
      this.bump()
      for (const event of ['open', 'ping', 'message'] as const) this.on(event, () => this.bump())
      this.on('close', () => clearTimeout(this.idle))
      this.on('unexpected-response', (_req, res) => {
        const chunks: Buffer[] = []
        res.on('data', (c: Buffer) => chunks.push(c))
        res.on('error', () => {})
        res.on('end', () => {
          const status = res.statusCode ?? 0
          const error = errorFromResponse(status, res.statusMessage ?? '', Buffer.concat(chunks).toString())
          if (status >= 500 || status === 429) this.fail(new Error(`${status}: ${error.message}`))
          else {
            o.onRefused(error)
            this.terminate()
          }
        })
      })
    }

    private bump(): void {
      clearTimeout(this.idle)
      this.idle = setTimeout(
        () => this.fail(new Error(`nothing heard for ${Math.round(o.idleMs / 1000)}s`)),
        o.idleMs,
      )
    }

    private fail(err: Error): void {
      clearTimeout(this.idle)
      this.emit('error', err)
      this.terminate()
    }
  }
  // ws's handler properties take its own event types; JobStream reads only `data` of a message.
  return GatewaySocket as unknown as new (
    url: string,
  ) => WebSocketLike
}
