/**
 * Each request's duration, measured once: into the metrics by method, route pattern (never the raw path:
 * unbounded) and status, and into the access log. The log line names the path without its query, which is
 * where a browser's `?token=` travels, so no token reaches the log; probes and scrapes are logged at debug.
 */
import type { MiddlewareHandler } from 'hono'
import type { Logger } from 'pino'
import type { GatewayMetrics } from '../metrics.ts'

const PROBES = new Set(['/healthz', '/readyz', '/metrics'])

/** @example app.use(requestMetrics({ metrics, logger })) */
export const requestMetrics = ({
  metrics,
  logger,
}: {
  metrics: GatewayMetrics
  logger?: Logger
}): MiddlewareHandler =>
  async function requestMetrics(c, next) {
    const start = performance.now()
    await next()
    const route = c.req.routePath || 'unmatched'
    // An accepted WebSocket upgrade: node-ws answers Hono with a placeholder 200, the client gets a 101.
    const upgraded = c.res.status === 200 && c.req.header('upgrade')?.toLowerCase() === 'websocket'
    const status = upgraded ? 101 : c.res.status
    const seconds = (performance.now() - start) / 1000
    metrics.httpDuration.observe({ method: c.req.method, route, status: String(status) }, seconds)
    if (!logger) return
    const ms = Math.round(seconds * 10_000) / 10
    const line = `${c.req.method} ${c.req.path} ${status} ${ms} ms`
    const fields = { method: c.req.method, route, status, ms }
    if (PROBES.has(c.req.path)) logger.debug(fields, line)
    else if (status >= 500) logger.warn(fields, line)
    else logger.info(fields, line)
  }
