/**
 * Abuse of a real gateway: cross-site requests and DNS rebinding without tokens, brute force of tokens,
 * `?token=` on REST routes, id probing between tenants, quotas, and Redis going away under a submit.
 */
import { type ChildProcess, spawn } from 'node:child_process'
import { randomUUID } from 'node:crypto'
import { request } from 'node:http'
import { setTimeout as sleep } from 'node:timers/promises'
import { and, eq } from 'drizzle-orm'
import { Redis } from 'ioredis'
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest'
import WebSocket from 'ws'
import { jobAttempts, jobEvents, jobs } from '../../schema/db/tables.ts'
import { freePort } from '../helpers/ports.ts'
import { type Stack, startStack, waitFor } from '../helpers/stack.ts'

const LORA = { type: 'train_lora', params: { baseModel: 'sd15', datasetPath: 'ds', epochs: 1 } }

/** A raw HTTP request (fetch may not set Host), with any headers. */
function raw(
  url: string,
  opts: { method?: string; headers?: Record<string, string>; body?: string } = {},
): Promise<{
  status: number
  json: { error?: { code: string; message: string } } & Record<string, unknown>
}> {
  return new Promise((resolve, reject) => {
    const req = request(url, { method: opts.method ?? 'GET', headers: opts.headers }, (res) => {
      let text = ''
      res.on('data', (d) => (text += d))
      res.on('end', () => {
        let json = {}
        try {
          json = JSON.parse(text)
        } catch {}
        resolve({ status: res.statusCode ?? 0, json })
      })
    })
    req.on('error', reject)
    req.end(opts.body)
  })
}

const wsStatus = (url: string, headers: Record<string, string> = {}): Promise<number> =>
  new Promise((resolve) => {
    const ws = new WebSocket(url, { headers })
    ws.on('unexpected-response', (_req, res) => resolve(res.statusCode ?? 0))
    ws.on('open', () => {
      resolve(101)
      ws.close()
    })
    ws.on('error', () => {})
  })

const rowsOf = (stack: Stack, id: string) => stack.database.db.select().from(jobs).where(eq(jobs.id, id))

describe('without API tokens: cross-site requests and DNS rebinding', () => {
  let stack: Stack
  beforeAll(async () => {
    stack = await startStack({ withHost: false })
  })
  afterAll(async () => {
    await stack?.close()
  })
  const evil = 'https://evil.example'

  it('refuses a cross-site text/plain or JSON submit (403) and queues nothing', async () => {
    for (const contentType of ['text/plain', 'application/json']) {
      const jobId = `xsite-${randomUUID().slice(0, 8)}`
      const res = await raw(stack.url('/api/train'), {
        method: 'POST',
        headers: { origin: evil, 'content-type': contentType },
        body: JSON.stringify({ ...LORA, jobId }),
      })
      expect(res.status, contentType).toBe(403)
      expect(res.json.error?.code).toBe('forbidden_origin')
      expect(await rowsOf(stack, jobId)).toHaveLength(0)
      expect(await stack.queue.getJob(jobId)).toBeUndefined()
    }
  })

  it('refuses an Origin of "null" and a foreign origin on the same host name but another port', async () => {
    for (const origin of ['null', 'http://127.0.0.1:1', 'http://localhost.evil.example']) {
      const res = await raw(stack.url('/api/jobs'), { headers: { origin } })
      expect(res.status, origin).toBe(403)
    }
  })

  it('refuses a cross-site cancel (403) and leaves the job queued', async () => {
    const jobId = `victim-${randomUUID().slice(0, 8)}`
    const ok = await raw(stack.url('/api/train'), {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ ...LORA, jobId }),
    })
    expect(ok.status).toBe(202)
    const res = await raw(stack.url(`/api/jobs/${jobId}/cancel`), {
      method: 'POST',
      headers: { origin: evil },
    })
    expect(res.status).toBe(403)
    expect((await rowsOf(stack, jobId))[0]?.status).toBe('queued')
  })

  it('refuses a foreign Host (DNS rebinding) on the API, the console and the WebSocket', async () => {
    const port = stack.gateway.port
    for (const path of ['/api/jobs', '/', '/openapi.json']) {
      const res = await raw(stack.url(path), { headers: { host: `rebind.evil.example:${port}` } })
      expect(res.status, path).toBe(403)
      expect(res.json.error?.code).toBe('forbidden_host')
    }
    const wsUrl = `${stack.gateway.url.replace('http', 'ws')}/ws`
    expect(await wsStatus(wsUrl, { host: `rebind.evil.example:${port}` })).toBe(403)
    expect(await wsStatus(wsUrl, { origin: evil })).toBe(403)
    expect(await wsStatus(wsUrl, { origin: stack.gateway.url })).toBe(101)
    expect(await wsStatus(wsUrl)).toBe(101)
  })

  it('serves same-origin requests (the console) and clients that send no Origin', async () => {
    for (const host of [`127.0.0.1:${stack.gateway.port}`, `localhost:${stack.gateway.port}`]) {
      const res = await raw(stack.url('/api/train'), {
        method: 'POST',
        headers: { host, origin: `http://${host}`, 'content-type': 'application/json' },
        body: JSON.stringify(LORA),
      })
      expect(res.status, host).toBe(202)
    }
    expect((await raw(stack.url('/'))).status).toBe(200)
  })

  it('requires a JSON body on submit (415), whatever the Origin', async () => {
    const res = await raw(stack.url('/api/train'), {
      method: 'POST',
      headers: { 'content-type': 'text/plain' },
      body: JSON.stringify(LORA),
    })
    expect(res.status).toBe(415)
    expect(res.json.error?.code).toBe('unsupported_media_type')
  })

  it('a submit whose add BullMQ refuses leaves no row, no event stream and no published event', async () => {
    const jobId = `refused-${randomUUID().slice(0, 8)}`
    const seen: string[] = []
    const sub = stack.redis.duplicate()
    await sub.subscribe(`progress:${jobId}`)
    sub.on('message', (_ch, msg) => seen.push(msg))
    // Over BullMQ's priority maximum (2 097 151); refused by the schema or by BullMQ, never queued.
    const res = await raw(stack.url('/api/train'), {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ ...LORA, jobId, priority: 2_097_152 }),
    })
    expect(res.status).not.toBe(202)
    await sleep(200)
    sub.disconnect()
    expect(await rowsOf(stack, jobId)).toHaveLength(0)
    expect(await stack.redis.exists(`gpu-jobs:{${jobId}}:events`, `gpu-jobs:{${jobId}}:seq`)).toBe(0)
    expect(seen).toEqual([])
  })

  it('answers health and readiness whatever the Host (probes use an IP)', async () => {
    for (const path of ['/healthz', '/readyz'])
      expect((await raw(stack.url(path), { headers: { host: '10.1.2.3:8080' } })).status, path).toBe(200)
  })
})

describe('with API tokens', () => {
  const ALICE = 'alice-token-0001-abcdef'
  const BOB = 'bob-token-0002-abcdefgh'
  // Names of their own: the test database is shared, and quotas count by name.
  const alice = `alice${randomUUID().slice(0, 8)}`
  const bob = `bob${randomUUID().slice(0, 8)}`
  let stack: Stack
  const call = (path: string, token: string | undefined, init: RequestInit = {}) =>
    fetch(stack.url(path), {
      ...init,
      headers: {
        ...(init.body ? { 'content-type': 'application/json' } : {}),
        ...(token ? { authorization: `Bearer ${token}` } : {}),
      },
    })
  const submit = (token: string, body: unknown) =>
    call('/api/train', token, { method: 'POST', body: JSON.stringify(body) })
  beforeAll(async () => {
    stack = await startStack({
      withHost: false,
      env: {
        API_TOKENS: `${alice}:${ALICE},${bob}:${BOB}`,
        RATE_LIMIT_RPS: '1000',
        MAX_QUEUED_JOBS_PER_TOKEN: '5',
        MAX_PARAMS_BYTES: '2048',
      },
    })
  })
  afterAll(async () => {
    await stack?.close()
  })

  it('answers /readyz without a token, naming only which backend is down', async () => {
    const res = await fetch(stack.url('/readyz'))
    expect(res.status).toBe(200)
    expect(await res.json()).toEqual({ ok: true, checks: { redis: 'ok', postgres: 'ok', s3: 'ok' } })
  })

  it('accepts ?token= only on SSE (and the WebSocket), not on REST routes', async () => {
    const res = await submit(ALICE, LORA)
    const { jobId } = (await res.json()) as { jobId: string }
    for (const path of ['/api/jobs', `/api/status/${jobId}`, `/api/jobs/${jobId}/artifacts`])
      expect((await fetch(stack.url(`${path}?token=${ALICE}`))).status, path).toBe(401)
    const sse = await fetch(stack.url(`/api/jobs/${jobId}/events?token=${ALICE}`))
    expect(sse.status).toBe(200)
    await sse.body?.cancel()
    const wsUrl = `${stack.gateway.url.replace('http', 'ws')}/ws?token=${ALICE}`
    expect(await wsStatus(wsUrl)).toBe(101)
    await call(`/api/jobs/${jobId}/cancel`, ALICE, { method: 'POST' })
  })

  it('resubmitting a jobId: the same body answers 200, a different one 409 conflict', async () => {
    const body = { ...LORA, jobId: `same-${randomUUID().slice(0, 8)}`, priority: 3 }
    const first = await submit(ALICE, body)
    expect(first.status).toBe(202)
    const { jobId } = (await first.json()) as { jobId: string }
    const again = await submit(ALICE, {
      ...body,
      params: { epochs: 1, datasetPath: 'ds', baseModel: 'sd15' },
    })
    expect(again.status).toBe(200)
    expect(((await again.json()) as { jobId: string }).jobId).toBe(jobId)
    for (const changed of [
      { ...body, params: { ...body.params, epochs: 2 } },
      { ...body, priority: 4 },
      { ...body, type: 'train_voice', params: { speakerName: 'a', datasetPath: 'ds' } },
    ]) {
      const res = await submit(ALICE, changed)
      expect(res.status).toBe(409)
      expect(((await res.json()) as { error: { code: string } }).error.code).toBe('conflict')
    }
    await call(`/api/jobs/${jobId}/cancel`, ALICE, { method: 'POST' })
  })

  it("tells nothing about another token's ids: the same requested jobId is a separate job per token", async () => {
    const requested = `shared-${randomUUID().slice(0, 8)}`
    const a = await submit(ALICE, { ...LORA, jobId: requested })
    const b = await submit(BOB, { ...LORA, jobId: requested, params: { ...LORA.params, epochs: 3 } })
    expect([a.status, b.status]).toEqual([202, 202])
    const aliceId = ((await a.json()) as { jobId: string }).jobId
    const bobId = ((await b.json()) as { jobId: string }).jobId
    expect(aliceId).not.toBe(bobId)
    expect((await call(`/api/status/${bobId}`, BOB)).status).toBe(200)
    expect((await call(`/api/status/${aliceId}`, BOB)).status).toBe(404)
    // Bob asking for alice's id as it was returned still gets a job of his own.
    const c = await submit(BOB, { ...LORA, jobId: aliceId })
    expect(c.status).toBe(202)
    const bobSecond = ((await c.json()) as { jobId: string }).jobId
    expect(bobSecond).not.toBe(aliceId)
    const aliceRow = (await rowsOf(stack, aliceId))[0]
    expect(aliceRow).toMatchObject({ owner: alice, params: LORA.params })
    await call(`/api/jobs/${aliceId}/cancel`, ALICE, { method: 'POST' })
    for (const id of [bobId, bobSecond]) await call(`/api/jobs/${id}/cancel`, BOB, { method: 'POST' })
  })

  it('lists summaries: no params, no result, no artifacts', async () => {
    const res = await call('/api/jobs?limit=500', ALICE)
    expect(res.status).toBe(200)
    const page = (await res.json()) as { jobs: Record<string, unknown>[] }
    expect(page.jobs.length).toBeGreaterThan(0)
    for (const job of page.jobs) {
      expect(job).not.toHaveProperty('params')
      expect(job).not.toHaveProperty('result')
      expect(job).not.toHaveProperty('artifacts')
      expect(job).toHaveProperty('status')
    }
  })

  it('caps unfinished jobs per token (429 quota_exceeded) and params size (413), each token on its own', async () => {
    const big = { ...LORA, params: { ...LORA.params, baseModel: 'x'.repeat(3000) } }
    const tooBig = await submit(BOB, big)
    expect(tooBig.status).toBe(413)
    const tooBigBody = (await tooBig.json()) as { error: { code: string; issues?: { path: string }[] } }
    expect(tooBigBody.error.code).toBe('too_large')
    expect(tooBigBody.error.issues?.[0]?.path).toBe('params')

    const ids: string[] = []
    const statuses: number[] = []
    for (let i = 0; i < 7; i++) {
      const res = await submit(ALICE, LORA)
      statuses.push(res.status)
      const json = (await res.json()) as { jobId?: string; error?: { code: string; message: string } }
      if (json.jobId) ids.push(json.jobId)
      else {
        expect(json.error?.code).toBe('quota_exceeded')
      }
    }
    expect(statuses.filter((s) => s === 429).length).toBeGreaterThan(0)
    const unfinished = (await stack.database.db.select().from(jobs).where(eq(jobs.owner, alice))).filter(
      (r) => r.status === 'queued',
    )
    expect(unfinished.length).toBeLessThanOrEqual(5)
    // Bob has his own quota; a cancelled job frees a place.
    expect((await submit(BOB, LORA)).status).toBe(202)
    const first = ids[0] ?? ''
    await call(`/api/jobs/${first}/cancel`, ALICE, { method: 'POST' })
    expect((await submit(ALICE, LORA)).status).toBe(202)
  })

  it('keeps the queued event and a gateway cancellation in the SQL history (job_events)', async () => {
    await stack.database.db.delete(jobs).where(eq(jobs.owner, alice))
    const res = await submit(ALICE, LORA)
    const { jobId } = (await res.json()) as { jobId: string }
    await waitFor(
      async () =>
        (await stack.database.db.select().from(jobEvents).where(eq(jobEvents.jobId, jobId))).length === 1,
      5000,
      'the queued event in job_events',
    )
    expect((await call(`/api/jobs/${jobId}/cancel`, ALICE, { method: 'POST' })).status).toBe(202)
    const history = await stack.database.db.select().from(jobEvents).where(eq(jobEvents.jobId, jobId))
    expect(history.map((e) => [e.seq, e.status])).toEqual([
      [1, 'queued'],
      [2, 'cancelled'],
    ])
  })
})

describe('failed authentication is rate-limited per client, before auth', () => {
  const ALICE = 'alice-token-0001-abcdef'
  // A gateway per test: each starts with a fresh wrong-token limit.
  let stack: Stack
  beforeEach(async () => {
    stack = await startStack({
      withHost: false,
      env: { API_TOKENS: `alice:${ALICE}`, RATE_LIMIT_RPS: '1000' },
    })
  })
  afterEach(async () => {
    await stack?.close()
  })

  it('answers 429 with Retry-After after a burst of wrong tokens, even to a right one from that client', async () => {
    const statuses: number[] = []
    for (let i = 0; i < 60; i++) {
      const res = await fetch(stack.url('/api/jobs'), {
        headers: { authorization: `Bearer wrong-token-${String(i).padStart(12, '0')}` },
      })
      statuses.push(res.status)
      await res.arrayBuffer()
    }
    expect(statuses.filter((s) => s === 401).length).toBeLessThan(45)
    expect(statuses.at(-1)).toBe(429)
    const right = await fetch(stack.url('/api/jobs'), { headers: { authorization: `Bearer ${ALICE}` } })
    expect(right.status).toBe(429)
    expect(Number(right.headers.get('retry-after'))).toBeGreaterThanOrEqual(1)
    // Health stays open to probes.
    expect((await fetch(stack.url('/healthz'))).status).toBe(200)
  })

  const upgrade = (token?: string) =>
    new Promise<{ status: number; retryAfter?: string; code?: string }>((resolve) => {
      const query = token === undefined ? '' : `?token=${token}`
      const ws = new WebSocket(`${stack.gateway.url.replace('http', 'ws')}/ws${query}`)
      ws.on('open', () => {
        ws.close()
        resolve({ status: 101 })
      })
      ws.on('unexpected-response', (_req, res) => {
        let text = ''
        res.on('data', (d: Buffer) => (text += d))
        res.on('end', () =>
          resolve({
            status: res.statusCode ?? 0,
            retryAfter: res.headers['retry-after'],
            code: (JSON.parse(text) as { error: { code: string } }).error.code,
          }),
        )
      })
      ws.on('error', () => {})
    })

  it('counts wrong tokens on WebSocket upgrades too: 429 with Retry-After there and on REST, right token or not', async () => {
    // Upgrades without a token guess nothing: they do not count.
    for (let i = 0; i < 40; i++) expect((await upgrade()).status).toBe(401)
    expect((await upgrade(ALICE)).status).toBe(101)
    const statuses: number[] = []
    for (let i = 0; i < 60; i++)
      statuses.push((await upgrade(`wrong-token-${String(i).padStart(12, '0')}`)).status)
    expect(statuses.filter((s) => s === 401).length).toBeLessThan(45)
    const last = await upgrade(ALICE)
    expect(last).toMatchObject({ status: 429, code: 'rate_limited' })
    expect(Number(last.retryAfter)).toBeGreaterThanOrEqual(1)
    const rest = await fetch(stack.url('/api/jobs'), { headers: { authorization: `Bearer ${ALICE}` } })
    expect(rest.status).toBe(429)
  })
})

describe('Redis down or stalled (a private redis-server)', () => {
  let server: ChildProcess
  let port: number
  let stack: Stack
  let admin: Redis
  const startRedis = async () => {
    server = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', ''], {
      stdio: 'ignore',
    })
    await waitFor(
      async () => {
        const probe = new Redis(port, '127.0.0.1', { lazyConnect: true, retryStrategy: () => null })
        probe.on('error', () => {})
        try {
          await probe.connect()
          return (await probe.ping()) === 'PONG'
        } finally {
          probe.disconnect()
        }
      },
      10_000,
      'redis-server',
    )
  }
  const stopRedis = () =>
    new Promise<void>((resolve) => {
      if (server.exitCode !== null) return resolve()
      server.once('exit', () => resolve())
      server.kill('SIGKILL')
    })
  beforeAll(async () => {
    port = await freePort()
    await startRedis()
    stack = await startStack({ redisUrl: `redis://127.0.0.1:${port}` })
    admin = new Redis(port, '127.0.0.1')
    admin.on('error', () => {})
  })
  afterAll(async () => {
    admin?.disconnect()
    await stack?.close().catch(() => {})
    if (server) await stopRedis()
  })

  it('a submit whose add stalls answers 503 naming Redis within seconds, and the job never runs', async () => {
    const jobId = `stalled-${randomUUID().slice(0, 8)}`
    // Writes wait; the add reaches Redis and runs once the pause ends: its outcome is unknown to the gateway.
    await admin.call('CLIENT', 'PAUSE', '6000', 'WRITE')
    const t0 = Date.now()
    const res = await raw(stack.url('/api/train'), {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ ...LORA, jobId }),
    })
    expect(Date.now() - t0).toBeLessThan(5000)
    expect(res.status).toBe(503)
    expect(res.json.error?.code).toBe('backend_unavailable')
    expect(res.json.error?.message).toMatch(/Redis/)
    expect(res.json.error?.message).toMatch(/nothing was queued/)
    await admin.call('CLIENT', 'UNPAUSE')
    // The add did land: the gateway removes it and the row, and no host runs it.
    await waitFor(
      async () => (await rowsOf(stack, jobId)).length === 0 && !(await stack.queue.getJob(jobId)),
      15_000,
      'the unqueued submit to be cleaned up',
    )
    expect(
      await stack.database.db
        .select()
        .from(jobAttempts)
        .where(and(eq(jobAttempts.jobId, jobId))),
    ).toHaveLength(0)
    // The same request again is a fresh submit that runs.
    const again = await raw(stack.url('/api/train'), {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ ...LORA, jobId }),
    })
    expect(again.status).toBe(202)
    expect((await stack.waitStatus(jobId, ['completed', 'failed'], 30_000)).status).toBe('completed')
  })

  it('Redis stopped: submit, cancel and SSE answer 503 naming Redis within seconds; status answers from Postgres', async () => {
    const done = await raw(stack.url('/api/train'), {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(LORA),
    })
    const known = String(done.json.jobId)
    await stack.waitStatus(known, ['completed'], 30_000)
    await stopRedis()
    const jobId = `down-${randomUUID().slice(0, 8)}`
    const timed = async (
      fn: () => Promise<{ status: number; json: { error?: { code: string; message: string } } }>,
    ) => {
      const t0 = Date.now()
      const r = await fn()
      return { ...r, ms: Date.now() - t0 }
    }
    const sub = await timed(() =>
      raw(stack.url('/api/train'), {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ ...LORA, jobId }),
      }),
    )
    const sse = await timed(() => raw(stack.url(`/api/jobs/${known}/events`)))
    const status = await timed(() => raw(stack.url(`/api/status/${known}`)))
    for (const r of [sub, sse]) {
      expect(r.status).toBe(503)
      expect(r.json.error?.code).toBe('backend_unavailable')
      expect(r.json.error?.message).toMatch(/Redis/)
      expect(r.ms).toBeLessThan(5000)
    }
    expect(status.status).toBe(200)
    expect(status.ms).toBeLessThan(5000)
    const ready = await raw(stack.url('/readyz'))
    expect(ready.status).toBe(503)
    expect(ready.json).toMatchObject({ ok: false, checks: { redis: 'down', postgres: 'ok' } })
    // Nothing was queued: no row now, and none appears when Redis is back.
    expect(await rowsOf(stack, jobId)).toHaveLength(0)
    await startRedis()
    await sleep(1500)
    expect(await rowsOf(stack, jobId)).toHaveLength(0)
    expect(await stack.queue.getJob(jobId)).toBeUndefined()
  })
})
