import { randomBytes, randomUUID } from 'node:crypto'
import type { Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import { connect, type Socket } from 'node:net'
import { setTimeout as sleep } from 'node:timers/promises'
import { serve } from '@hono/node-server'
import { eq } from 'drizzle-orm'
import { Hono } from 'hono'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import WebSocket from 'ws'
import { EventHub } from '../../gateway/hub.ts'
import { GatewayMetrics } from '../../gateway/metrics.ts'
import { StreamCounter } from '../../gateway/rate-limit.ts'
import { type Gateway, startGateway } from '../../gateway/server.ts'
import { JobStore } from '../../gateway/store.ts'
import { CLOSE_POLICY, webSockets } from '../../gateway/ws.ts'
import { createRedis, createS3Client } from '../../schema/clients.ts'
import type { JobStatus } from '../../schema/common.ts'
import { jobs } from '../../schema/db/tables.ts'
import { eventLogKey } from '../../schema/keys.ts'
import { emitEvent } from '../../schema/progress-log.ts'
import {
  completedEvent,
  quietLogger,
  type Stack,
  startStack,
  TEST_REDIS_URL,
  waitFor,
} from '../helpers/stack.ts'
import { startTcpProxy } from '../helpers/tcp-proxy.ts'

/**
 * Every SSE stream and WebSocket gives back its slot (StreamCounter) and its gauge on every path, a finished
 * job's stream ends, out-of-range resume points are refused, and a client that does not read cannot grow the
 * gateway. Real gateway, real Redis and Postgres; raw sockets where the timing of an abort matters.
 */

const TOKEN = 'stream-token-0001'
const MAX_STREAMS = 3
let stack: Stack

beforeAll(async () => {
  stack = await startStack({
    withHost: false,
    env: {
      API_TOKENS: `alice:${TOKEN}`,
      RATE_LIMIT_RPS: '10000',
      MAX_STREAMS_PER_TOKEN: String(MAX_STREAMS),
    },
  })
})
afterAll(async () => {
  await stack?.close()
})

const auth = { authorization: `Bearer ${TOKEN}` }

async function gauge(baseUrl: string, name: string): Promise<number> {
  const text = await (await fetch(`${baseUrl}/metrics`)).text()
  const m = text.match(new RegExp(`^${name} (\\S+)$`, 'm'))
  return Number(m?.[1] ?? Number.NaN)
}
const counter = async (baseUrl: string, series: string): Promise<number> => {
  const text = await (await fetch(`${baseUrl}/metrics`)).text()
  const line = text.split('\n').find((l) => l.startsWith(`${series} `))
  return Number(line?.split(' ')[1] ?? 0)
}
const streamsBackToZero = (baseUrl = stack.gateway.url) =>
  waitFor(
    async () =>
      (await gauge(baseUrl, 'gateway_sse_streams')) === 0 &&
      (await gauge(baseUrl, 'gateway_websocket_connections')) === 0,
    15_000,
    'gateway_sse_streams and gateway_websocket_connections to be 0',
  )

/** A job row of alice's, and `events` events in its replay log (the last one terminal when `status` is). */
async function makeJob(status: JobStatus, events: number): Promise<string> {
  const jobId = `st-${randomUUID().slice(0, 8)}`
  await stack.insertJob(jobId, status, 'alice')
  let seq = 0
  for (let i = 1; i <= events; i++) {
    const last = i === events
    const terminal = last && ['completed', 'failed', 'cancelled'].includes(status)
    const e = await emitEvent(
      stack.redis,
      {
        jobId,
        type: 'train_lora',
        status: last ? status : 'running',
        progress: last && terminal ? 100 : i,
        message: `step ${i}`,
        attempt: 1,
        timestamp: new Date().toISOString(),
      },
      { terminal },
    )
    seq = e.seq
  }
  await stack.database.db.update(jobs).set({ lastSeq: seq }).where(eq(jobs.id, jobId))
  return jobId
}

const running = (jobId: string, progress = 50) =>
  emitEvent(stack.redis, {
    jobId,
    type: 'train_lora',
    status: 'running',
    progress,
    message: 'x'.repeat(200),
    attempt: 1,
    timestamp: new Date().toISOString(),
  })

/** A raw HTTP/1.1 GET on loopback, so a test decides exactly when the client goes away. */
function rawGet(port: number, path: string, headers: Record<string, string> = auth) {
  const socket = connect(port, '127.0.0.1')
  let received = ''
  socket.setEncoding('latin1')
  socket.on('data', (d: string) => {
    received += d
  })
  socket.on('error', () => {})
  const lines = Object.entries({ host: `127.0.0.1:${port}`, ...headers }).map(([k, v]) => `${k}: ${v}`)
  socket.write(`GET ${path} HTTP/1.1\r\n${lines.join('\r\n')}\r\n\r\n`)
  const ended = new Promise<void>((resolve) => socket.on('close', () => resolve()))
  return {
    socket,
    ended,
    text: () => received,
    until: (re: RegExp, what: string) => waitFor(async () => re.test(received), 10_000, what),
  }
}

/** Opens `n` SSE streams of `jobId` at once: every one must get its headers (200, not 429). */
async function openStreams(baseUrl: string, jobId: string, n: number): Promise<number[]> {
  const controllers = Array.from({ length: n }, () => new AbortController())
  const statuses = await Promise.all(
    controllers.map(async (ac) => {
      const res = await fetch(`${baseUrl}/api/jobs/${jobId}/events`, { headers: auth, signal: ac.signal })
      return res.status
    }),
  )
  for (const ac of controllers) ac.abort()
  return statuses
}

/** `count` raw SSE clients of `jobId` one after another, each gone once `reached(client)` has resolved. */
async function dropClients(
  jobId: string,
  count: number,
  reached: (client: ReturnType<typeof rawGet>) => Promise<unknown>,
): Promise<void> {
  for (let i = 0; i < count; i++) {
    const r = rawGet(stack.gateway.port, `/api/jobs/${jobId}/events`)
    await reached(r)
    r.socket.destroy()
    await r.ended
  }
}

/** Every slot is free again: the gauge reads 0 and MAX_STREAMS streams open (and close) at once. */
async function expectAllSlotsBack(jobId: string): Promise<void> {
  await streamsBackToZero()
  expect(await openStreams(stack.gateway.url, jobId, MAX_STREAMS)).toEqual(Array(MAX_STREAMS).fill(200))
  await streamsBackToZero()
}

describe('SSE gives back its slot on every path', () => {
  it('60 clients that go away right after sending the request (before the headers)', async () => {
    const jobId = await makeJob('running', 1)
    // The request is on the wire; the client is gone before the gateway has looked the job up.
    await dropClients(
      jobId,
      60,
      (r) => new Promise<void>((resolve) => r.socket.once('connect', () => resolve())),
    )
    await expectAllSlotsBack(jobId)
  })

  it('60 clients that go away right after the headers, and 20 mid-stream', async () => {
    const jobId = await makeJob('running', 2)
    await dropClients(jobId, 60, (r) => r.until(/^HTTP\/1\.1 200/, 'the headers'))
    await dropClients(jobId, 20, (r) => r.until(/"seq":2/, 'the current state'))
    await expectAllSlotsBack(jobId)
  })

  it('the job ends: the stream ends after the terminal event', async () => {
    const jobId = await makeJob('running', 1)
    const res = await fetch(stack.url(`/api/jobs/${jobId}/events`), { headers: auth })
    expect(res.status).toBe(200)
    const body = res.text()
    await waitFor(async () => (await gauge(stack.gateway.url, 'gateway_sse_streams')) === 1, 10_000, 'open')
    await emitEvent(stack.redis, completedEvent(jobId), { terminal: true })
    expect(await body).toMatch(/"status":"completed"[^\n]*\nid: 2\n/)
    await streamsBackToZero()
  })

  it('a client that stops reading while events flood in is dropped (slow_client), slot given back', async () => {
    const jobId = await makeJob('running', 1)
    const r = rawGet(stack.gateway.port, `/api/jobs/${jobId}/events`)
    await r.until(/"seq":1/, 'the current state')
    r.socket.pause()
    const series = 'gateway_events_dropped_total{transport="sse",reason="slow_client"}'
    const before = await counter(stack.gateway.url, series)
    let sent = 0
    while (sent < 40_000 && (await counter(stack.gateway.url, series)) === before) {
      await Promise.all(Array.from({ length: 500 }, () => running(jobId)))
      sent += 500
    }
    expect(await counter(stack.gateway.url, series)).toBeGreaterThan(before)
    await waitFor(async () => (await gauge(stack.gateway.url, 'gateway_sse_streams')) === 0, 15_000, '0')
    r.socket.destroy()
    expect(await openStreams(stack.gateway.url, jobId, MAX_STREAMS)).toEqual(Array(MAX_STREAMS).fill(200))
    await streamsBackToZero()
  })
})

describe('SSE resume at the end of a job', () => {
  it('Last-Event-ID or ?after= of the last seq on a finished job: 200 and the stream ends at once, empty', async () => {
    const jobId = await makeJob('completed', 3)
    for (const init of [{ 'last-event-id': '3' }, {}] as Record<string, string>[]) {
      const path = `/api/jobs/${jobId}/events${'last-event-id' in init ? '' : '?after=3'}`
      const res = await fetch(stack.url(path), {
        headers: { ...auth, ...init },
        signal: AbortSignal.timeout(5000),
      })
      expect(res.status).toBe(200)
      expect(await res.text()).toBe('')
    }
    // Further than the job went: nothing is due either.
    const far = await fetch(stack.url(`/api/jobs/${jobId}/events?after=9007199254740991`), {
      headers: auth,
      signal: AbortSignal.timeout(5000),
    })
    expect(far.status).toBe(200)
    expect(await far.text()).toBe('')
    await streamsBackToZero()
  })

  it('Last-Event-ID before the end: what is due, then the stream ends', async () => {
    const jobId = await makeJob('failed', 4)
    const res = await fetch(stack.url(`/api/jobs/${jobId}/events`), {
      headers: { ...auth, 'last-event-id': '2' },
      signal: AbortSignal.timeout(5000),
    })
    const text = await res.text()
    expect([...text.matchAll(/^id: (\d+)$/gm)].map((m) => m[1])).toEqual(['3', '4'])
    expect(text).toContain('"status":"failed"')
    await streamsBackToZero()
  })

  it('a finished job whose replay log has expired: resuming at its last seq ends at once', async () => {
    const jobId = await makeJob('completed', 3)
    await stack.redis.del(eventLogKey(jobId))
    const res = await fetch(stack.url(`/api/jobs/${jobId}/events`), {
      headers: { ...auth, 'last-event-id': '3' },
      signal: AbortSignal.timeout(5000),
    })
    expect(await res.text()).toBe('')
    // From the start it is the stored state, then the end.
    const fresh = await fetch(stack.url(`/api/jobs/${jobId}/events`), {
      headers: auth,
      signal: AbortSignal.timeout(5000),
    })
    expect(await fresh.text()).toMatch(/"status":"completed".*\nid: 3\n/)
    await streamsBackToZero()
  })

  const bad = [
    '-1',
    '1.5',
    '1e309',
    '1e3',
    '99999999999999999999',
    '9007199254740992',
    'abc',
    '',
    ' 1',
    '0x10',
  ]
  it.each(bad)(
    'after %j in ?after= or Last-Event-ID: 400 naming the field, value not echoed',
    async (value) => {
      const jobId = await makeJob('completed', 1)
      const forms: [string, Record<string, string>][] = [
        [`/api/jobs/${jobId}/events?after=${encodeURIComponent(value)}`, auth],
      ]
      // HTTP trims the blanks around a header value: " 1" arrives as "1", a valid id.
      if (value === value.trim())
        forms.push([`/api/jobs/${jobId}/events`, { ...auth, 'last-event-id': value }])
      for (const [path, headers] of forms) {
        const res = await fetch(stack.url(path), { headers, signal: AbortSignal.timeout(5000) })
        expect(res.status, `${path} ${JSON.stringify(headers)}`).toBe(400)
        const body = (await res.json()) as {
          error: { code: string; message: string; issues: { path: string }[] }
        }
        expect(body.error.issues[0]?.path).toBe('after')
        if (value.length > 2) expect(body.error.message).not.toContain(value.trim())
      }
      await streamsBackToZero()
    },
  )
})

/** One message from a WebSocket (the next one). */
const nextMessage = (ws: WebSocket) =>
  new Promise<Record<string, unknown>>((resolve) =>
    ws.once('message', (d) => resolve(JSON.parse(d.toString()) as Record<string, unknown>)),
  )

describe('WebSocket after', () => {
  it('an out-of-range after is an invalid_message notice, never a Redis error', async () => {
    const jobId = await makeJob('completed', 2)
    const ws = new WebSocket(`${stack.gateway.url.replace('http', 'ws')}/ws`, { headers: auth })
    await new Promise((r) => ws.once('open', r))
    for (const after of ['-1', '1.5', '1e309', '1e20', '9007199254740992', '"5"', 'null', '{}']) {
      const reply = nextMessage(ws)
      ws.send(`{"op":"subscribe","jobId":"${jobId}","after":${after}}`)
      const msg = (await reply) as { op: string; error?: { code: string } }
      expect(msg.op, after).toBe('error')
      expect(msg.error?.code, after).toBe('invalid_message')
    }
    // Not JSON, or not text: said so, not as a missing field.
    for (const [frame, said] of [
      ['not json', 'the message is not valid JSON'],
      [Buffer.from('{"op":"subscribe"}'), 'a message is JSON text'],
    ] as const) {
      const reply = nextMessage(ws)
      ws.send(frame)
      expect(await reply).toEqual({ op: 'error', error: { code: 'invalid_message', message: said } })
    }
    // The largest one allowed is fine: a finished job with nothing after it.
    const ok = nextMessage(ws)
    ws.send(JSON.stringify({ op: 'subscribe', jobId, after: Number.MAX_SAFE_INTEGER }))
    expect(await ok).toMatchObject({ op: 'subscribed', jobId })
    ws.close()
    await streamsBackToZero()
  })
})

/** A WebSocket upgrade done by hand on a raw socket: the test decides whether and when it reads. */
async function rawWebSocket(port: number, headers: Record<string, string> = auth) {
  const socket = connect(port, '127.0.0.1')
  socket.on('error', () => {})
  let head = ''
  const lines = Object.entries({
    host: `127.0.0.1:${port}`,
    upgrade: 'websocket',
    connection: 'Upgrade',
    'sec-websocket-key': randomBytes(16).toString('base64'),
    'sec-websocket-version': '13',
    ...headers,
  }).map(([k, v]) => `${k}: ${v}`)
  socket.write(`GET /ws HTTP/1.1\r\n${lines.join('\r\n')}\r\n\r\n`)
  const closed = new Promise<void>((resolve) => socket.on('close', () => resolve()))
  await new Promise<void>((resolve) => {
    const onData = (d: Buffer) => {
      head += d.toString('latin1')
      if (head.includes('\r\n\r\n')) {
        socket.off('data', onData)
        // Stop reading: what the gateway sends from now on piles up in its buffers.
        socket.pause()
        resolve()
      }
    }
    socket.on('data', onData)
  })
  return { socket, head, closed }
}

/** A masked client text frame (RFC 6455 5.2). */
function frame(text: string): Buffer {
  const payload = Buffer.from(text)
  const mask = randomBytes(4)
  const len = payload.length
  const header =
    len < 126
      ? Buffer.from([0x81, 0x80 | len])
      : Buffer.from([0x81, 0x80 | 126, (len >> 8) & 0xff, len & 0xff])
  const masked = Buffer.alloc(len)
  for (let i = 0; i < len; i++) masked[i] = (payload[i] ?? 0) ^ (mask[i % 4] ?? 0)
  return Buffer.concat([header, mask, masked])
}

/** Writes batches of frames until the socket is gone or `maxFrames` are written; returns how many. */
async function flood(
  socket: Socket,
  closed: Promise<void>,
  text: string,
  maxFrames: number,
): Promise<number> {
  let gone = false
  void closed.then(() => {
    gone = true
  })
  const batch = Buffer.concat(Array.from({ length: 500 }, () => frame(text)))
  let sent = 0
  while (!gone && sent < maxFrames) {
    // Our own send buffer may fill (the gateway stopped reading): wait for it, or for the end.
    const flushed = socket.write(batch)
    sent += 500
    if (!flushed) await Promise.race([new Promise((r) => socket.once('drain', r)), closed, sleep(500)])
    else await new Promise((r) => setImmediate(r))
  }
  return sent
}

describe('WebSocket: slots, slow clients and inbound rate', () => {
  it('60 upgrades that fail or are abandoned give their slots back', async () => {
    const port = stack.gateway.port
    for (let i = 0; i < 30; i++) {
      // Not a valid handshake (no key): ws refuses it without ever opening a socket.
      const r = rawGet(port, '/ws', {
        ...auth,
        upgrade: 'websocket',
        connection: 'Upgrade',
        'sec-websocket-version': '13',
      })
      await r.ended
    }
    for (let i = 0; i < 30; i++) {
      const r = rawGet(port, '/ws', {
        ...auth,
        upgrade: 'websocket',
        connection: 'Upgrade',
        'sec-websocket-key': randomBytes(16).toString('base64'),
        'sec-websocket-version': '13',
      })
      await new Promise<void>((resolve) => r.socket.once('connect', () => resolve()))
      r.socket.destroy()
      await r.ended
    }
    await streamsBackToZero()
    const sockets = await Promise.all(
      Array.from({ length: MAX_STREAMS }, async () => {
        const ws = new WebSocket(`${stack.gateway.url.replace('http', 'ws')}/ws`, { headers: auth })
        ws.on('error', () => {})
        await new Promise<void>((resolve, reject) => {
          ws.once('open', () => resolve())
          ws.once('unexpected-response', (_q, res) => reject(new Error(`status ${res.statusCode}`)))
        })
        return ws
      }),
    )
    for (const ws of sockets) ws.close()
    await streamsBackToZero()
  })

  it('a client that sends many small frames and never reads is closed; its slot is free again', async () => {
    const ws = await rawWebSocket(stack.gateway.port)
    expect(ws.head).toMatch(/^HTTP\/1\.1 101/)
    await waitFor(
      async () => (await gauge(stack.gateway.url, 'gateway_websocket_connections')) === 1,
      5000,
      'open',
    )
    const sent = await flood(ws.socket, ws.closed, '{"op":"unsubscribe","jobId":"nope"}', 200_000)
    // Closed long before the flood ran out, and the gateway's gauge is back to 0.
    expect(sent).toBeLessThan(200_000)
    await ws.closed
    await streamsBackToZero()
    const again = await Promise.all(
      Array.from({ length: MAX_STREAMS }, () => rawWebSocket(stack.gateway.port)),
    )
    expect(again.map((w) => w.head.slice(0, 12))).toEqual(Array(MAX_STREAMS).fill('HTTP/1.1 101'))
    for (const w of again) w.socket.destroy()
    await streamsBackToZero()
  })

  it('a client over the inbound message rate is closed with 1008', async () => {
    const ws = new WebSocket(`${stack.gateway.url.replace('http', 'ws')}/ws`, { headers: auth })
    await new Promise((r) => ws.once('open', r))
    const code = new Promise<number>((resolve) => ws.once('close', (c) => resolve(c)))
    let replies = 0
    ws.on('message', () => replies++)
    for (let i = 0; i < 2000 && ws.readyState === ws.OPEN; i++) ws.send('{"op":"unsubscribe","jobId":"nope"}')
    expect(await code).toBe(CLOSE_POLICY)
    // Answered up to the burst, not 2000 times.
    expect(replies).toBeLessThan(1000)
    await streamsBackToZero()
  })
})

describe('WebSocket: every send obeys the slow-client rule (notices too)', () => {
  let server: Server
  let hub: EventHub
  let close: () => void
  let metrics: GatewayMetrics
  let url: string
  const redis = createRedis(TEST_REDIS_URL)
  const subscriber = createRedis(TEST_REDIS_URL)
  beforeAll(async () => {
    await Promise.all([redis.connect(), subscriber.connect()])
    hub = new EventHub(subscriber, redis, async () => null)
    await hub.start()
    metrics = new GatewayMetrics()
    // The WebSocket route alone (no middleware) on an app that also serves the gauges.
    const app = new Hono()
    app.get('/metrics', async (c) => c.text(await metrics.registry.metrics()))
    const ws = webSockets({
      app,
      hub,
      store: new JobStore(stack.database.db),
      metrics,
      logger: quietLogger(),
      authRequired: false,
      streams: new StreamCounter(10),
      maxStreamsPerToken: 10,
      // Small buffer cap, no inbound limit to speak of: only the send guard can stop this client.
      limits: { maxBufferedBytes: 64 * 1024, messagesPerSecond: 1_000_000, messageBurst: 1_000_000 },
    })
    server = await new Promise<Server>((resolve) => {
      const s = serve({ fetch: app.fetch, port: 0, hostname: '127.0.0.1' }, () => resolve(s as Server))
    })
    ws.attach(server)
    url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`
    close = ws.close
  })
  afterAll(async () => {
    close?.()
    await new Promise((r) => server?.close(r))
    await hub?.close()
    redis.disconnect()
    subscriber.disconnect()
  })

  it('error notices to a client that never reads fill the buffer up to the cap, then it is closed', async () => {
    const port = Number(new URL(url).port)
    const ws = await rawWebSocket(port, {})
    await waitFor(async () => (await gauge(url, 'gateway_websocket_connections')) === 1, 5000, 'open')
    // Each invalid message earns an error notice of ~100 bytes: 100k of them would be ~10 MB queued.
    await flood(ws.socket, ws.closed, '{"op":"nothing"}', 100_000)
    // The gateway closes it (4008) and, as the client never takes the close frame, destroys it: its gauge
    // is back to 0 although this client, not reading, cannot see that.
    await waitFor(async () => (await gauge(url, 'gateway_websocket_connections')) === 0, 20_000, 'closed')
    ws.socket.destroy()
  })
})

describe('gateway close() with streams open', () => {
  it('ends SSE streams (reading or not) and WebSockets, and resolves', async () => {
    const gw: Gateway = await startGateway({
      config: { ...stack.config, gatewayPort: 0 },
      database: stack.database,
      s3: createS3Client({ ...stack.config.s3, endpoint: stack.s3.endpoint }),
      logger: quietLogger(),
    })
    const jobId = await makeJob('running', 1)
    const reading = rawGet(gw.port, `/api/jobs/${jobId}/events`)
    await reading.until(/"seq":1/, 'the current state')
    const idle = rawGet(gw.port, `/api/jobs/${jobId}/events`)
    await idle.until(/"seq":1/, 'the current state')
    idle.socket.pause()
    const ws = new WebSocket(`${gw.url.replace('http', 'ws')}/ws?jobId=${jobId}`, { headers: auth })
    const wsClosed = new Promise<number>((resolve) => ws.once('close', (code) => resolve(code)))
    await new Promise((r) => ws.once('open', r))
    await waitFor(async () => (await gauge(gw.url, 'gateway_sse_streams')) === 2, 5000, 'two streams')
    const outcome = await Promise.race([gw.close().then(() => 'closed'), sleep(20_000).then(() => 'hung')])
    expect(outcome).toBe('closed')
    await reading.ended
    idle.socket.resume()
    await idle.ended
    expect(await wsClosed).toBe(1001)
  })
})

describe('Redis stalled while a stream is set up', () => {
  it('a client that leaves gives its slot back; one that waits gets a 503, not a hang', async () => {
    const redisPort = Number(new URL(TEST_REDIS_URL).port || 6379)
    const proxy = await startTcpProxy(redisPort, new URL(TEST_REDIS_URL).hostname)
    const gw: Gateway = await startGateway({
      config: { ...stack.config, gatewayPort: 0, redisUrl: `redis://127.0.0.1:${proxy.port}` },
      database: stack.database,
      s3: createS3Client({ ...stack.config.s3, endpoint: stack.s3.endpoint }),
      logger: quietLogger(),
    })
    try {
      const jobId = await makeJob('running', 1)
      await proxy.cut()
      for (let i = 0; i < MAX_STREAMS * 2; i++) {
        const r = rawGet(gw.port, `/api/jobs/${jobId}/events`)
        // Let it reach the (stalled) subscription, then leave.
        await sleep(200)
        r.socket.destroy()
        await r.ended
      }
      await waitFor(async () => (await gauge(gw.url, 'gateway_sse_streams')) === 0, 10_000, 'no stream')
      const started = Date.now()
      const waited = await Promise.all(
        Array.from({ length: MAX_STREAMS }, () =>
          fetch(`${gw.url}/api/jobs/${jobId}/events`, {
            headers: auth,
            signal: AbortSignal.timeout(30_000),
          }).then(async (res) => ({
            status: res.status,
            body: (await res.json()) as { error: { code: string } },
          })),
        ),
      )
      expect(waited.map((w) => w.status)).toEqual(Array(MAX_STREAMS).fill(503))
      expect(waited[0]?.body.error.code).toBe('backend_unavailable')
      expect(Date.now() - started).toBeLessThan(20_000)
      // A WebSocket subscribe in the stall: an error notice, and the socket stays usable.
      const ws = new WebSocket(`${gw.url.replace('http', 'ws')}/ws`, { headers: auth })
      await new Promise((r) => ws.once('open', r))
      const reply = new Promise<Record<string, unknown>>((resolve) =>
        ws.on('message', (d) => {
          const msg = JSON.parse(d.toString()) as Record<string, unknown>
          if (msg.op === 'error') resolve(msg)
        }),
      )
      ws.send(JSON.stringify({ op: 'subscribe', jobId }))
      expect(await reply).toMatchObject({ op: 'error', jobId, error: { code: 'unavailable' } })
      ws.close()
      await waitFor(
        async () =>
          (await gauge(gw.url, 'gateway_sse_streams')) === 0 &&
          (await gauge(gw.url, 'gateway_websocket_connections')) === 0,
        10_000,
        'no stream',
      )
      await proxy.restore()
      // Until the gateway has reconnected, a stream is refused at once (503): wait for readiness first.
      await waitFor(
        async () => (await fetch(`${gw.url}/readyz`)).status === 200,
        15_000,
        'the gateway back on Redis',
      )
      // Every slot is free again: MAX_STREAMS streams open at once.
      expect(await openStreams(gw.url, jobId, MAX_STREAMS)).toEqual(Array(MAX_STREAMS).fill(200))
    } finally {
      await proxy.restore().catch(() => {})
      await gw.close()
      await proxy.close()
    }
  })
})
