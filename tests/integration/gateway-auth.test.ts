import { setTimeout as sleep } from 'node:timers/promises'
import { inArray } from 'drizzle-orm'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import WebSocket from 'ws'
import type { JobStatusBody } from '../../schema/api.ts'
import { jobs } from '../../schema/db/tables.ts'
import type { ProgressEvent } from '../../schema/events.ts'
import { type Stack, startStack, waitFor } from '../helpers/stack.ts'

const ALICE = 'alice-token-0001'
const BOB = 'bob-token-0002-xy'
let stack: Stack
let aliceJob: string
let aliceFile: string

const call = (path: string, token?: string, init: RequestInit = {}) =>
  fetch(stack.url(path), {
    ...init,
    headers: { ...(init.headers ?? {}), ...(token ? { authorization: `Bearer ${token}` } : {}) },
  })

beforeAll(async () => {
  stack = await startStack({ env: { API_TOKENS: `alice:${ALICE},bob:${BOB}`, RATE_LIMIT_RPS: '1000' } })
  const res = await call('/api/train', ALICE, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ type: 'train_voice', params: { speakerName: 'a', datasetPath: 'ds', epochs: 1 } }),
  })
  expect(res.status).toBe(202)
  aliceJob = ((await res.json()) as { jobId: string }).jobId
  stack.url = (p: string) => `${stack.gateway.url}${p}`
  // ?token= is not accepted on REST routes: poll with the header.
  const done = await waitFor(
    async () => {
      const body = (await (await call(`/api/status/${aliceJob}`, ALICE)).json()) as JobStatusBody
      return body.status === 'completed' ? body : null
    },
    30_000,
    'alice’s job to complete',
  )
  aliceFile = done.artifacts[0]?.url ?? ''
})
afterAll(async () => {
  await stack?.close()
})

describe('with API_TOKENS set', () => {
  const routes: [string, string][] = [
    ['POST', '/api/train'],
    ['POST', '/api/jobs'],
    ['GET', '/api/jobs'],
    ['GET', '/api/status/x1'],
    ['GET', '/api/jobs/x1'],
    ['POST', '/api/jobs/x1/cancel'],
    ['GET', '/api/jobs/x1/artifacts'],
    ['GET', '/api/jobs/x1/artifacts/a.txt'],
    ['GET', '/api/jobs/x1/events'],
  ]
  it.each(routes)('%s %s needs a token (401), and a wrong one is refused too', async (method, path) => {
    expect((await call(path, undefined, { method })).status).toBe(401)
    const wrong = await call(path, 'not-a-real-token', { method })
    expect(wrong.status).toBe(401)
    expect(((await wrong.json()) as { error: { code: string } }).error.code).toBe('unauthorized')
  })

  it('leaves /healthz, /readyz, /metrics, the console page and the OpenAPI document open', async () => {
    for (const path of ['/healthz', '/readyz', '/metrics', '/', '/openapi.json'])
      expect((await call(path)).status, path).toBe(200)
  })

  it("hides alice's job from bob on every route (404), and shows it to alice", async () => {
    for (const path of [
      `/api/status/${aliceJob}`,
      `/api/jobs/${aliceJob}`,
      `/api/jobs/${aliceJob}/artifacts`,
      aliceFile,
      `/api/jobs/${aliceJob}/events`,
    ]) {
      expect((await call(path, BOB)).status, path).toBe(404)
      expect((await call(path, ALICE)).status, path).toBe(200)
    }
    expect((await call(`/api/jobs/${aliceJob}/cancel`, BOB, { method: 'POST' })).status).toBe(404)
    for (const action of ['rerun', 'retry'])
      expect((await call(`/api/jobs/${aliceJob}/${action}`, BOB, { method: 'POST' })).status, action).toBe(
        404,
      )
    expect((await call(`/api/jobs/${aliceJob}/cancel`, ALICE, { method: 'POST' })).status).toBe(409)
    const bobList = (await (await call('/api/jobs', BOB)).json()) as { jobs: { jobId: string }[] }
    expect(bobList.jobs.map((j) => j.jobId)).not.toContain(aliceJob)
    const aliceList = (await (await call('/api/jobs', ALICE)).json()) as { jobs: { jobId: string }[] }
    expect(aliceList.jobs.map((j) => j.jobId)).toContain(aliceJob)
  })

  it('scopes a requested jobId to its token: bob gets a job of his own, alice a 409 for another body', async () => {
    const body = JSON.stringify({
      type: 'train_voice',
      jobId: aliceJob,
      params: { speakerName: 'b', datasetPath: 'ds' },
    })
    const headers = { 'content-type': 'application/json' }
    const bob = await call('/api/train', BOB, { method: 'POST', headers, body })
    expect(bob.status).toBe(202)
    expect(((await bob.json()) as { jobId: string }).jobId).toBe(`bob.${aliceJob}`)
    expect((await call('/api/train', ALICE, { method: 'POST', headers, body })).status).toBe(409)
  })

  it('accepts ?token= on SSE and WebSocket, and hides other owners’ jobs there too', async () => {
    const sse = await fetch(stack.url(`/api/jobs/${aliceJob}/events?token=${ALICE}`))
    expect(sse.status).toBe(200)
    expect(await sse.text()).toContain('"status":"completed"')
    expect((await fetch(stack.url(`/api/jobs/${aliceJob}/events?token=${BOB}`))).status).toBe(404)

    const wsUrl = stack.gateway.url.replace('http', 'ws')
    const refused = await new Promise<number>((resolve) => {
      const ws = new WebSocket(`${wsUrl}/ws?jobId=${aliceJob}`)
      ws.on('unexpected-response', (_req, res) => resolve(res.statusCode ?? 0))
      ws.on('open', () => resolve(101))
      ws.on('error', () => {})
    })
    expect(refused).toBe(401)
    const seen = async (token: string) =>
      new Promise<string>((resolve, reject) => {
        const ws = new WebSocket(`${wsUrl}/ws?jobId=${aliceJob}&token=${token}`)
        ws.on('message', (d) => {
          const msg = JSON.parse(d.toString()) as ProgressEvent & { op?: string; error?: { code: string } }
          if (msg.op === 'error') resolve(msg.error?.code ?? 'error')
          else if (!msg.op) resolve(msg.status)
          else return
          ws.close()
        })
        ws.on('error', reject)
      })
    expect(await seen(ALICE)).toBe('completed')
    expect(await seen(BOB)).toBe('not_found')
  })

  it('never logs or echoes tokens', async () => {
    const res = await call('/api/status/x1', 'leaky-secret-token-value')
    expect(await res.text()).not.toContain('leaky-secret')
  })
})

describe('limits', () => {
  let limited: Stack
  beforeAll(async () => {
    limited = await startStack({
      withHost: false,
      env: { API_TOKENS: `alice:${ALICE},bob:${BOB}`, RATE_LIMIT_RPS: '5', MAX_STREAMS_PER_TOKEN: '2' },
    })
  })
  afterAll(async () => {
    await limited?.close()
  })

  it('rate-limits each token on its own: 429 with Retry-After', async () => {
    const statuses: number[] = []
    let retryAfter: string | null = null
    for (let i = 0; i < 20; i++) {
      const res = await fetch(limited.url('/api/jobs'), { headers: { authorization: `Bearer ${ALICE}` } })
      statuses.push(res.status)
      if (res.status === 429) retryAfter = res.headers.get('retry-after')
      await res.arrayBuffer()
    }
    expect(statuses.filter((s) => s === 200).length).toBeGreaterThanOrEqual(10)
    expect(statuses).toContain(429)
    expect(Number(retryAfter)).toBeGreaterThanOrEqual(1)
    // Bob has his own bucket.
    expect(
      (await fetch(limited.url('/api/jobs'), { headers: { authorization: `Bearer ${BOB}` } })).status,
    ).toBe(200)
  })

  it('caps open streams per token', async () => {
    const wsUrl = `${limited.gateway.url.replace('http', 'ws')}/ws?token=${BOB}`
    const open = (): Promise<{ ws: WebSocket; status: number }> =>
      new Promise((resolve) => {
        const ws = new WebSocket(wsUrl)
        ws.on('open', () => resolve({ ws, status: 101 }))
        ws.on('unexpected-response', (_q, res) => resolve({ ws, status: res.statusCode ?? 0 }))
        ws.on('error', () => {})
      })
    const a = await open()
    const b = await open()
    const c = await open()
    expect([a.status, b.status, c.status]).toEqual([101, 101, 429])
    a.ws.close()
    await sleep(200)
    const d = await open()
    expect(d.status).toBe(101)
    b.ws.close()
    d.ws.close()
  })

  it('caps subscriptions per socket', async () => {
    const ids = Array.from({ length: 201 }, (_, i) => `capjob-${limited.prefix}-${i}`)
    await limited.database.db.insert(jobs).values(
      ids.map((id) => ({
        id,
        type: 'train_lora' as const,
        status: 'queued' as const,
        params: {},
        owner: 'bob',
        outputPrefix: `loras/${id}`,
      })),
    )
    const ws = new WebSocket(`${limited.gateway.url.replace('http', 'ws')}/ws?token=${BOB}`)
    await new Promise((r) => ws.on('open', r))
    const notices: { op: string; error?: { code: string } }[] = []
    ws.on('message', (d) => {
      const msg = JSON.parse(d.toString()) as { op?: string; error?: { code: string } }
      if (msg.op) notices.push(msg as { op: string })
    })
    for (const jobId of ids) {
      ws.send(JSON.stringify({ op: 'subscribe', jobId }))
      await sleep(2)
    }
    await sleep(1500)
    ws.close()
    // Rows this test made by hand: gone, so they count toward no later quota of bob's.
    await limited.database.db.delete(jobs).where(inArray(jobs.id, ids))
    expect(notices.filter((n) => n.op === 'subscribed')).toHaveLength(200)
    expect(notices.filter((n) => n.error?.code === 'too_many_subscriptions')).toHaveLength(1)
  })
})

describe('OpenAPI', () => {
  it('documents every route, generated from the schemas', async () => {
    const doc = (await (await call('/openapi.json')).json()) as {
      openapi: string
      paths: Record<string, Record<string, unknown>>
      components: { schemas: Record<string, { properties?: Record<string, unknown> }> }
    }
    expect(doc.openapi).toBe('3.1.0')
    for (const path of [
      '/api/train',
      '/api/jobs',
      '/api/status/{jobId}',
      '/api/jobs/{jobId}',
      '/api/jobs/{jobId}/cancel',
      '/api/jobs/{jobId}/rerun',
      '/api/jobs/{jobId}/retry',
      '/api/jobs/{jobId}/events',
      '/api/jobs/{jobId}/artifacts',
      '/api/jobs/{jobId}/artifacts/{path}',
      '/ws',
      '/healthz',
      '/readyz',
      '/metrics',
    ])
      expect(doc.paths[path], path).toBeDefined()
    expect(Object.keys(doc.components.schemas.TrainLoraSubmit?.properties ?? {})).toEqual(
      expect.arrayContaining(['type', 'params', 'jobId', 'priority', 'timeoutSec', 'maxAttempts']),
    )
    expect(Object.keys(doc.components.schemas.TrainLoraParams?.properties ?? {})).toContain('learningRate')
  })
})
