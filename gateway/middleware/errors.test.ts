import { Writable } from 'node:stream'
import { Hono } from 'hono'
import pino from 'pino'
import { describe, expect, it } from 'vitest'
import { ApiError, BackendUnavailableError, onBackend } from '../errors.ts'
import { errorHandler, unmatched } from './errors.ts'

const logged: string[] = []
const logger = pino(
  { level: 'debug' },
  new Writable({
    write(chunk, _enc, done) {
      logged.push(String(chunk))
      done()
    },
  }),
)
const app = new Hono()
app.onError(errorHandler({ logger }))
app.notFound(unmatched(app))
app.get('/api', () => {
  throw new ApiError(429, 'rate_limited', 'slow down', undefined, { 'retry-after': '3' })
})
app.get('/redis', () => onBackend('Redis', () => Promise.reject(new Error('Connection is closed.'))))
app.get('/pg', () =>
  onBackend('Postgres', () => Promise.reject(Object.assign(new Error('x'), { code: 'ECONNREFUSED' }))),
)
app.get('/s3', () => {
  throw Object.assign(new Error('connect ECONNREFUSED 127.0.0.1:9000'), {
    code: 'ECONNREFUSED',
    $metadata: {},
  })
})
app.get('/untagged-redis', () => {
  throw new Error("Stream isn't writeable and enableOfflineQueue options is false")
})
const sub = new Hono()
sub.post('/jobs/:jobId/cancel', (c) => c.json({ ok: true }))
sub.get('/jobs/:jobId', (c) => c.json({ ok: true }))
sub.delete('/jobs/:jobId', (c) => c.json({ ok: true }))
app.route('/api', sub)
app.get('/bug', () => {
  throw new TypeError('x is undefined')
})

describe('errorHandler', () => {
  it('answers an ApiError with its status, body and headers', async () => {
    const res = await app.request('/api')
    expect(res.status).toBe(429)
    expect(res.headers.get('retry-after')).toBe('3')
    expect(await res.json()).toEqual({ error: { code: 'rate_limited', message: 'slow down' } })
  })

  it('answers a backend down with 503 backend_unavailable naming it, tagged or not', async () => {
    for (const [path, name] of [
      ['/redis', 'Redis'],
      ['/pg', 'Postgres'],
      ['/s3', 'S3'],
      ['/untagged-redis', 'Redis'],
    ]) {
      const res = await app.request(path ?? '')
      expect(res.status, path).toBe(503)
      const body = (await res.json()) as { error: { code: string; message: string } }
      expect(body.error.code).toBe('backend_unavailable')
      expect(body.error.message).toMatch(new RegExp(`^${name} is unavailable`))
    }
    expect(new BackendUnavailableError('Redis', 'nothing was queued').message).toBe(
      'Redis is unavailable; nothing was queued',
    )
  })

  it('answers anything else with a bare 500, and logs the path, never the query (tokens)', async () => {
    const res = await app.request('/bug?token=secret-token-value-123')
    expect(res.status).toBe(500)
    expect(await res.text()).not.toContain('x is undefined')
    await app.request('/redis?token=secret-token-value-123')
    expect(logged.length).toBeGreaterThan(0)
    expect(logged.join('\n')).not.toContain('secret-token-value')
  })

  it('answers an unknown route 404 in the same shape', async () => {
    expect(await (await app.request('/nope')).json()).toMatchObject({ error: { code: 'not_found' } })
    // A path like a route's, one segment too many, is no route.
    expect((await app.request('/api/jobs/j1/cancel/x', { method: 'POST' })).status).toBe(404)
  })

  it("answers a route's path with a method it does not take 405, with the ones it takes in Allow", async () => {
    const res = await app.request('/api/jobs/j1/cancel')
    expect(res.status).toBe(405)
    expect(res.headers.get('allow')).toBe('POST')
    expect(await res.json()).toEqual({
      error: { code: 'method_not_allowed', message: '/api/jobs/j1/cancel takes POST, not GET' },
    })
    const put = await app.request('/api/jobs/j1', { method: 'PUT' })
    expect(put.status).toBe(405)
    expect(put.headers.get('allow')?.split(', ').sort()).toEqual(['DELETE', 'GET', 'HEAD'])
    // A mounted sub-app's routes are the app's: they still answer.
    expect((await app.request('/api/jobs/j1/cancel', { method: 'POST' })).status).toBe(200)
  })
})
