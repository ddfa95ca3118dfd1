import { Registry } from 'prom-client'
import { describe, expect, it } from 'vitest'
import { cancelledJobId } from './cancel-listener.ts'
import { type HealthSources, healthApp } from './health-server.ts'

const sources = (over: Partial<HealthSources> = {}): HealthSources => ({
  registry: new Registry(),
  hostId: 'host-1',
  running: () => 2,
  closing: () => false,
  readiness: async () => ({ redis: 'ok', postgres: 'ok', s3: 'ok' }),
  engines: () => ({ train_lora: ['simulate'] }),
  ...over,
})

describe("the host's health and metrics routes", () => {
  it('/healthz: alive, with the host, its running jobs and whether it is closing', async () => {
    const res = await healthApp(sources()).request('/healthz?x=1')
    expect(res.status).toBe(200)
    expect(res.headers.get('content-type')).toMatch(/^application\/json/)
    expect(await res.json()).toEqual({ ok: true, host: 'host-1', running: 2, closing: false })
  })

  it('/readyz: 200 when every check is ok, 503 when one is down or the host is closing', async () => {
    const ready = await healthApp(sources()).request('/readyz')
    expect(ready.status).toBe(200)
    expect(await ready.json()).toEqual({
      ok: true,
      checks: { redis: 'ok', postgres: 'ok', s3: 'ok' },
      closing: false,
      engines: { train_lora: ['simulate'] },
    })
    const down = await healthApp(
      sources({ readiness: async () => ({ redis: 'down: timeout', postgres: 'ok', s3: 'ok' }) }),
    ).request('/readyz')
    expect(down.status).toBe(503)
    expect(await down.json()).toMatchObject({ ok: false })
    const closing = await healthApp(sources({ closing: () => true })).request('/readyz')
    expect(closing.status).toBe(503)
  })

  it("/metrics: the registry's exposition; anything else an empty 404; a failure a 500", async () => {
    const registry = new Registry()
    const res = await healthApp(sources({ registry })).request('/metrics')
    expect(res.status).toBe(200)
    expect(res.headers.get('content-type')).toBe(registry.contentType)
    const missing = await healthApp(sources()).request('/nope')
    expect(missing.status).toBe(404)
    expect(await missing.text()).toBe('')
    const broken = await healthApp(
      sources({
        readiness: async () => {
          throw new Error('boom')
        },
      }),
    ).request('/readyz')
    expect(broken.status).toBe(500)
    expect(await broken.text()).toBe('Error: boom')
  })
})

describe('cancel messages', () => {
  it('take the job id of {"jobId": "..."} and ignore anything else', () => {
    expect(cancelledJobId('{"jobId":"j1"}')).toBe('j1')
    for (const raw of ['', 'null', '{"jobId":3}', '[1]', 'not json'])
      expect(cancelledJobId(raw)).toBeUndefined()
  })
})
