/**
 * The GPU host's own HTTP server (METRICS_PORT on METRICS_HOST): `/metrics` for Prometheus, `/healthz`
 * (liveness) and `/readyz` (Redis, Postgres, S3 and configured engines reachable, not closing).
 */
import type { AddressInfo } from 'node:net'
import { createAdaptorServer } from '@hono/node-server'
import { Hono } from 'hono'
import type { Registry } from 'prom-client'

export interface HealthSources {
  registry: Registry
  hostId: string
  running: () => number
  closing: () => boolean
  readiness: () => Promise<Record<string, string>>
  engines: () => unknown
}

/** The routes, as a Hono app (testable with `app.request()`). */
export function healthApp(src: HealthSources): Hono {
  const app = new Hono()
  app.get('/metrics', async (c) =>
    c.body(await src.registry.metrics(), 200, { 'content-type': src.registry.contentType }),
  )
  app.get('/healthz', (c) =>
    c.json({ ok: true, host: src.hostId, running: src.running(), closing: src.closing() }),
  )
  app.get('/readyz', async (c) => {
    const checks = await src.readiness()
    const ok = Object.values(checks).every((check) => check === 'ok') && !src.closing()
    return c.json({ ok, checks, closing: src.closing(), engines: src.engines() }, ok ? 200 : 503)
  })
  app.notFound((c) => c.body(null, 404))
  app.onError((err, c) => c.text(String(err), 500))
  return app
}

export class HealthServer {
  private readonly server

  constructor(src: HealthSources) {
    this.server = createAdaptorServer({ fetch: healthApp(src).fetch })
  }

  /** Listens; rejects when the port is taken (the caller names the variable that moves it). */
  listen(port: number, host: string): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      this.server.once('error', reject)
      this.server.listen(port, host, () => {
        this.server.off('error', reject)
        resolve()
      })
    })
  }

  get port(): number {
    const addr = this.server.address() as AddressInfo | string | null
    return typeof addr === 'object' && addr ? addr.port : 0
  }

  async close(): Promise<void> {
    await new Promise<void>((resolve) => this.server.close(() => resolve()))
    if ('closeAllConnections' in this.server) this.server.closeAllConnections()
  }
}
