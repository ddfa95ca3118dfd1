import { Hono } from 'hono'
import pino from 'pino'
import { describe, expect, it } from 'vitest'
import { auth } from './auth.ts'
import { errorHandler } from './errors.ts'

const TOKEN = 'alice-token-0123456789'
const make = (tokens = new Map([['alice', TOKEN]]), metricsToken?: string) => {
  const app = new Hono()
  app.onError(errorHandler({ logger: pino({ level: 'silent' }) }))
  app.use(
    auth({
      tokens,
      metricsToken,
      isPublic: (p) => p === '/healthz' || p === '/readyz',
      acceptsQueryToken: (p) => p.endsWith('/events'),
    }),
  )
  app.all('*', (c) => c.json({ owner: c.get('owner') }))
  return app
}
const bearer = (t: string) => ({ authorization: `Bearer ${t}` })

describe('auth', () => {
  it('without tokens everyone is the local user (owner null)', async () => {
    expect(await (await make(new Map()).request('/api/jobs')).json()).toEqual({ owner: null })
  })

  it('needs a bearer token on API routes; public ones (health, readiness) stay open', async () => {
    const app = make()
    expect((await app.request('/api/jobs')).status).toBe(401)
    expect((await app.request('/api/jobs', { headers: bearer('wrong-token-0123456789') })).status).toBe(401)
    expect(await (await app.request('/api/jobs', { headers: bearer(TOKEN) })).json()).toEqual({
      owner: 'alice',
    })
    for (const p of ['/healthz', '/readyz']) expect((await app.request(p)).status, p).toBe(200)
  })

  it('takes ?token= only where a browser cannot send a header (SSE)', async () => {
    const app = make()
    expect((await app.request(`/api/jobs/j1/events?token=${TOKEN}`)).status).toBe(200)
    for (const p of ['/api/jobs', '/api/status/j1', '/api/jobs/j1/cancel', '/api/jobs/j1/artifacts/a']) {
      const res = await app.request(`${p}?token=${TOKEN}`)
      expect(res.status, p).toBe(401)
      expect(await res.text()).not.toContain(TOKEN)
    }
  })

  it('/metrics takes METRICS_TOKEN when set, and is open when not', async () => {
    expect((await make().request('/metrics')).status).toBe(200)
    const app = make(undefined, 'metrics-token-0123456789')
    expect((await app.request('/metrics')).status).toBe(401)
    expect((await app.request('/metrics', { headers: bearer(TOKEN) })).status).toBe(401)
    expect((await app.request('/metrics', { headers: bearer('metrics-token-0123456789') })).status).toBe(200)
  })
})
