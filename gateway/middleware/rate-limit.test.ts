import { Hono } from 'hono'
import pino from 'pino'
import { describe, expect, it } from 'vitest'
import { RateLimiter } from '../rate-limit.ts'
import { auth } from './auth.ts'
import { errorHandler } from './errors.ts'
import { authFailureLimit, rateLimit } from './rate-limit.ts'

const TOKEN = 'alice-token-0123456789'
const make = () => {
  const app = new Hono()
  app.onError(errorHandler({ logger: pino({ level: 'silent' }) }))
  app.use(
    authFailureLimit({
      limiter: new RateLimiter(1, 5),
      clientKey: (c) => c.req.header('x-test-client') ?? '',
    }),
  )
  app.use(
    auth({
      tokens: new Map([['alice', TOKEN]]),
      isPublic: (p) => p === '/healthz',
      acceptsQueryToken: () => false,
    }),
  )
  app.use(rateLimit({ limiter: new RateLimiter(2, 4), key: (c) => c.get('owner'), describe: 'too fast' }))
  app.all('*', (c) => c.text('ok'))
  return app
}
const get = (app: Hono, client: string, token?: string, path = '/api/jobs') =>
  app.request(path, {
    headers: { 'x-test-client': client, ...(token ? { authorization: `Bearer ${token}` } : {}) },
  })

describe('authFailureLimit', () => {
  it('after a burst of wrong tokens a client gets 429 with Retry-After, even with the right token', async () => {
    const app = make()
    const statuses: number[] = []
    for (let i = 0; i < 8; i++) statuses.push((await get(app, 'a', `wrong-token-${i}-0123456789`)).status)
    expect(statuses).toEqual([401, 401, 401, 401, 401, 429, 429, 429])
    const right = await get(app, 'a', TOKEN)
    expect(right.status).toBe(429)
    expect(Number(right.headers.get('retry-after'))).toBeGreaterThanOrEqual(1)
    // Another client, and requests without a token (probes, public pages), are not affected.
    expect((await get(app, 'b', TOKEN)).status).toBe(200)
    expect((await get(app, 'a', undefined, '/healthz')).status).toBe(200)
  })

  it('does not count requests without a token, nor right ones', async () => {
    const app = make()
    for (let i = 0; i < 10; i++) expect((await get(app, 'c')).status).toBe(401)
    expect((await get(app, 'c', TOKEN)).status).toBe(200)
  })
})

describe('rateLimit', () => {
  it('limits each token on its own: 429 with Retry-After past the burst', async () => {
    const app = make()
    const statuses: number[] = []
    for (let i = 0; i < 6; i++) statuses.push((await get(app, 'd', TOKEN)).status)
    expect(statuses.slice(0, 4)).toEqual([200, 200, 200, 200])
    expect(statuses.at(-1)).toBe(429)
  })
})
