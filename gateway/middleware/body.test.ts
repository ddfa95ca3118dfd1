import { Hono } from 'hono'
import pino from 'pino'
import { describe, expect, it } from 'vitest'
import { jsonBody } from './body.ts'
import { errorHandler } from './errors.ts'

const app = new Hono()
app.onError(errorHandler({ logger: pino({ level: 'silent' }) }))
app.post('/submit', jsonBody({ maxBytes: 100 }), async (c) => c.json(await c.req.json()))
const post = (headers: Record<string, string>, body: string) =>
  app.request('/submit', { method: 'POST', headers, body })

describe('jsonBody', () => {
  it('takes application/json, with parameters or a +json suffix', async () => {
    for (const type of ['application/json', 'application/json; charset=utf-8', 'application/vnd.x+json'])
      expect((await post({ 'content-type': type }, '{"a":1}')).status, type).toBe(200)
  })

  it('refuses what a cross-site form can send, or no type at all (415)', async () => {
    for (const type of [
      'text/plain',
      'application/x-www-form-urlencoded',
      'multipart/form-data; boundary=x',
      'application/jsonp',
      '',
    ]) {
      const res = await post(type ? { 'content-type': type } : {}, '{"a":1}')
      expect(res.status, type).toBe(415)
      expect(await res.json()).toMatchObject({ error: { code: 'unsupported_media_type' } })
    }
  })

  it('refuses a body over the limit (413, connection: close)', async () => {
    const res = await post({ 'content-type': 'application/json' }, JSON.stringify({ a: 'x'.repeat(200) }))
    expect(res.status).toBe(413)
    expect(res.headers.get('connection')).toBe('close')
    expect(await res.json()).toMatchObject({ error: { code: 'too_large' } })
  })
})
