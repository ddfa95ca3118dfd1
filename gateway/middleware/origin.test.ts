import { Hono } from 'hono'
import pino from 'pino'
import { describe, expect, it } from 'vitest'
import { errorHandler } from './errors.ts'
import { checkOrigin, originGuard, originPolicy } from './origin.ts'

const open = originPolicy({ apiTokens: new Map(), allowedOrigins: new Set(), gatewayHost: undefined })
const listed = originPolicy({
  apiTokens: new Map(),
  allowedOrigins: new Set(['https://console.example.com']),
  gatewayHost: undefined,
})
const tokens = originPolicy({
  apiTokens: new Map([['alice', 'a'.repeat(16)]]),
  allowedOrigins: new Set(),
  gatewayHost: '0.0.0.0',
})

const app = (policy = open) => {
  const a = new Hono()
  a.onError(errorHandler({ logger: pino({ level: 'silent' }) }))
  a.use(originGuard({ policy, exempt: (p) => p === '/healthz' }))
  a.all('*', (c) => c.text('ok'))
  return a
}
const req = (a: Hono, headers: Record<string, string>, path = '/api/jobs', method = 'POST') =>
  a.request(`http://127.0.0.1:8080${path}`, { method, headers })

describe('checkOrigin', () => {
  it('serves loopback Hosts with no Origin or their own Origin (default ports normalised)', () => {
    for (const [host, origin] of [
      ['127.0.0.1:8080', undefined],
      ['localhost:8080', 'http://localhost:8080'],
      ['[::1]:8080', 'http://[::1]:8080'],
      ['localhost', 'http://localhost:80'],
    ] as const)
      expect(checkOrigin({ host, origin }, open), `${host} ${origin}`).toBeNull()
  })

  it('refuses a foreign Host without tokens (DNS rebinding), whatever the Origin', () => {
    for (const host of ['evil.example:8080', 'localhost.evil.example', '10.0.0.5:8080', '', 'a b'])
      expect(checkOrigin({ host }, open)?.code, host).toBe('forbidden_host')
  })

  it('refuses a foreign, null, malformed or non-http Origin', () => {
    for (const origin of ['https://evil.example', 'http://127.0.0.1:1', 'null', 'not a url', 'file:///etc'])
      expect(checkOrigin({ host: '127.0.0.1:8080', origin }, open)?.code, origin).toBe('forbidden_origin')
  })

  it('ALLOWED_ORIGINS admits those origins and their hosts', () => {
    expect(checkOrigin({ host: '127.0.0.1:8080', origin: 'https://console.example.com' }, listed)).toBeNull()
    expect(
      checkOrigin({ host: 'console.example.com', origin: 'https://console.example.com' }, listed),
    ).toBeNull()
    expect(
      checkOrigin({ host: 'console.example.com', origin: 'https://other.example.com' }, listed)?.code,
    ).toBe('forbidden_origin')
  })

  it('with tokens any Host is served (a rebound page has no token) but the Origin rule holds', () => {
    expect(checkOrigin({ host: '10.0.0.5:8080' }, tokens)).toBeNull()
    expect(checkOrigin({ host: 'gpu.example.com', origin: 'https://gpu.example.com' }, tokens)).toBeNull()
    expect(checkOrigin({ host: 'gpu.example.com', origin: 'https://evil.example' }, tokens)?.code).toBe(
      'forbidden_origin',
    )
  })
})

describe('originGuard', () => {
  it('answers 403 with the error body, on every method', async () => {
    for (const method of ['GET', 'POST', 'PUT', 'DELETE']) {
      const res = await req(app(), { host: '127.0.0.1:8080', origin: 'https://evil.example' }, '/x', method)
      expect(res.status, method).toBe(403)
      expect(await res.json()).toMatchObject({ error: { code: 'forbidden_origin' } })
    }
  })

  it('lets exempt paths (probes) through with any Host', async () => {
    expect((await req(app(), { host: '10.1.2.3:8080' }, '/healthz', 'GET')).status).toBe(200)
    expect((await req(app(), { host: '10.1.2.3:8080' }, '/api/jobs', 'GET')).status).toBe(403)
  })

  it('serves a same-origin request', async () => {
    const res = await req(app(), { host: '127.0.0.1:8080', origin: 'http://127.0.0.1:8080' })
    expect(res.status).toBe(200)
  })
})
