/** Request durations by method, route pattern (never the raw path: unbounded) and status. */
import type { MiddlewareHandler } from 'hono'
import type { GatewayMetrics } from '../metrics.ts'

/** @example app.use(requestMetrics({ metrics })) */
export const requestMetrics = ({ metrics }: { metrics: GatewayMetrics }): MiddlewareHandler =>
  async function requestMetrics(c, next) {
    const start = performance.now()
    await next()
    const route = c.req.routePath || 'unmatched'
    metrics.httpDuration.observe(
      { method: c.req.method, route, status: String(c.res.status) },
      (performance.now() - start) / 1000,
    )
  }
