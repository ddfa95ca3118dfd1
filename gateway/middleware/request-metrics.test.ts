import { Hono } from 'hono'
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
