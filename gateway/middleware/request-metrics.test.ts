import { Hono } from 'hono'
import pino from 'pino'
import { describe, expect, it } from 'vitest'
import { GatewayMetrics } from '../metrics.ts'
import { requestMetrics } from './request-metrics.ts'

describe('requestMetrics', () => {
  it('labels a request by its route pattern, never its path, and an unknown path by the pattern of the middleware itself (/*)', async () => {
    const metrics = new GatewayMetrics()
    const app = new Hono()
    app.use(requestMetrics({ metrics }))
    app.get('/api/jobs/:jobId', (c) => c.json({ ok: true }))
    await app.request('/api/jobs/job-1')
    await app.request('/api/jobs/job-2')
    await app.request('/nowhere')
    const text = await metrics.registry.metrics()
    expect(text).toContain(
      'gateway_http_request_duration_seconds_count{method="GET",route="/api/jobs/:jobId",status="200"} 2',
    )
    expect(text).not.toContain('job-1')
    expect(text).toContain(
      'gateway_http_request_duration_seconds_count{method="GET",route="/*",status="404"} 1',
    )
  })
})

describe('the access log', () => {
  const capture = () => {
    const lines: { level: number; msg: string; route: string; status: number }[] = []
    const logger = pino(
      { level: 'debug' },
      { write: (s: string) => void lines.push(JSON.parse(s) as (typeof lines)[number]) },
    )
    return { lines, logger }
  }

  it('a line per request: method, path, status and duration, never the query (where ?token= travels)', async () => {
    const { lines, logger } = capture()
    const app = new Hono()
    app.use(requestMetrics({ metrics: new GatewayMetrics(), logger }))
    app.get('/api/jobs/:jobId/events', (c) => c.text('ok'))
    await app.request('/api/jobs/job-1/events?token=secret-token-0123456789')
    expect(lines).toHaveLength(1)
    expect(lines[0]).toMatchObject({ level: 30, route: '/api/jobs/:jobId/events', status: 200 })
    expect(lines[0]?.msg).toMatch(/^GET \/api\/jobs\/job-1\/events 200 [\d.]+ ms$/)
    expect(JSON.stringify(lines)).not.toContain('secret-token')
  })

  it('probes at debug, server errors at warn', async () => {
    const { lines, logger } = capture()
    const app = new Hono()
    app.use(requestMetrics({ metrics: new GatewayMetrics(), logger }))
    app.get('/healthz', (c) => c.text('ok'))
    app.get('/boom', (c) => c.text('down', 503))
    await app.request('/healthz')
    await app.request('/boom')
    expect(lines.map((l) => l.level)).toEqual([20, 40])
  })
})
