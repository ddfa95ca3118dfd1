/**
 * The gateway's app built from its stores and backends (real Redis and Postgres) and called in-process
 * with `app.request()`: no listening socket.
 */
import { randomUUID } from 'node:crypto'
import { mkdir, mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { Queue } from 'bullmq'
import { eq } from 'drizzle-orm'
import type { Hono } from 'hono'
import type { Redis } from 'ioredis'
import pino from 'pino'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createRedis, createS3Client, FAIL_FAST_REDIS } from '../schema/clients.ts'
import { loadConfig } from '../schema/config.ts'
import { type Database, openDatabase } from '../schema/db/connect.ts'
import { jobAttempts, jobs } from '../schema/db/tables.ts'
import { QUEUE_NAME } from '../schema/keys.ts'
import { TEST_DATABASE_URL, TEST_REDIS_URL } from '../tests/helpers/stores.ts'
import { createApp, rowSnapshot } from './app.ts'
import { EventHub } from './hub.ts'
import { GatewayMetrics } from './metrics.ts'
import { StreamCounter } from './rate-limit.ts'
import { JobStore } from './store.ts'

// The tests' Postgres and Redis (tests/helpers/global-setup.ts fills these in).
const ALICE = 'alice-app-token-0123456789'
const BOB = 'bob-app-token-0123456789'

let app: Hono
let database: Database
let queue: Queue
let hub: EventHub
let dataDir: string
const connections: Redis[] = []

beforeAll(async () => {
  dataDir = await mkdtemp(path.join(tmpdir(), 'gpu-data-'))
  await mkdir(path.join(dataDir, 'ds'))
  const prefix = `test-${randomUUID().slice(0, 8)}`
  const config = loadConfig({
    REDIS_URL: TEST_REDIS_URL,
    DATABASE_URL: TEST_DATABASE_URL,
    // Never called by these routes: no S3 server needed.
    S3_ENDPOINT: 'http://127.0.0.1:9',
    S3_BUCKET: `b-${prefix}`,
    DATA_DIR: dataDir,
    QUEUE_PREFIX: prefix,
    API_TOKENS: `alice:${ALICE},bob:${BOB}`,
  })
  database = await openDatabase({ url: TEST_DATABASE_URL, poolSize: 2 })
  const store = new JobStore(database.db)
  const [redis, queueConnection, subscriber] = [
    createRedis(TEST_REDIS_URL, FAIL_FAST_REDIS),
    createRedis(TEST_REDIS_URL, FAIL_FAST_REDIS),
    createRedis(TEST_REDIS_URL),
  ]
  connections.push(redis, queueConnection, subscriber)
  await Promise.all(connections.map((r) => r.connect()))
  queue = new Queue(QUEUE_NAME, { connection: queueConnection, prefix })
  hub = new EventHub(subscriber, redis, async (jobId) => {
    const row = await store.get(jobId)
    return row ? rowSnapshot(row) : null
  })
  await hub.start()
  ;({ app } = createApp({
    config,
    store,
    database,
    redis,
    queue,
    s3: createS3Client({ ...config.s3, endpoint: 'http://127.0.0.1:9' }),
    hub,
    metrics: new GatewayMetrics(),
    logger: pino({ level: 'silent' }),
    streams: new StreamCounter(config.maxStreamsPerToken),
  }))
})

afterAll(async () => {
  await hub?.close()
  await queue?.obliterate({ force: true }).catch(() => {})
  await queue?.close()
  for (const r of connections) r.disconnect()
  await database?.close()
  if (dataDir) await rm(dataDir, { recursive: true, force: true })
})

const as = (token: string, init: RequestInit = {}): RequestInit => ({
  ...init,
  headers: { authorization: `Bearer ${token}`, ...(init.headers as Record<string, string>) },
})
const submit = (token: string, body: unknown) =>
  app.request(
    '/api/train',
    as(token, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(body),
    }),
  )
const voiceJob = (jobId?: string) => ({
  type: 'train_voice',
  params: { speakerName: 'a', datasetPath: 'ds', epochs: 1 },
  ...(jobId === undefined ? {} : { jobId }),
})

describe('createApp with injected stores, through app.request()', () => {
  it('submits, then shows the job in its status and in the list', async () => {
    const res = await submit(ALICE, voiceJob())
    expect(res.status).toBe(202)
    const { jobId, status, statusUrl } = (await res.json()) as Record<string, string>
    expect(status).toBe('queued')
    expect(jobId).toBeTruthy()
    const body = (await (await app.request(statusUrl ?? '', as(ALICE))).json()) as Record<string, unknown>
    expect(body).toMatchObject({ jobId, type: 'train_voice', status: 'queued', attempt: 0, artifacts: [] })
    const list = (await (await app.request('/api/jobs?type=train_voice', as(ALICE))).json()) as {
      jobs: { jobId: string }[]
      nextCursor: string | null
    }
    expect(list.jobs.map((j) => j.jobId)).toContain(jobId)
    // The same jobId and request again: the same job, 200.
    const again = await submit(ALICE, voiceJob(jobId))
    expect(again.status).toBe(200)
    expect(await again.json()).toMatchObject({ jobId, status: 'queued' })
  })

  it('answers 400 naming the field', async () => {
    const bad = await app.request('/api/jobs?limit=0', as(ALICE))
    expect(bad.status).toBe(400)
    expect(await bad.json()).toMatchObject({ error: { code: 'invalid_query', issues: [{ path: 'limit' }] } })
    const res = await submit(ALICE, {
      type: 'train_voice',
      params: { speakerName: 'a', datasetPath: 'ds', epochs: 'x' },
    })
    expect(res.status).toBe(400)
    const { error } = (await res.json()) as { error: { issues: { path: string }[] } }
    expect(error.issues.map((i) => i.path)).toContain('params.epochs')
  })

  it('hides another owner’s job (404) on status, cancel and artifacts, and lists only one’s own', async () => {
    const { jobId } = (await (await submit(ALICE, voiceJob())).json()) as { jobId: string }
    for (const [path, method] of [
      [`/api/status/${jobId}`, 'GET'],
      [`/api/jobs/${jobId}`, 'GET'],
      [`/api/jobs/${jobId}/cancel`, 'POST'],
      [`/api/jobs/${jobId}/artifacts`, 'GET'],
    ] as const) {
      const res = await app.request(path, as(BOB, { method }))
      expect(res.status, path).toBe(404)
      expect(await res.json()).toMatchObject({ error: { code: 'not_found', message: `no job "${jobId}"` } })
    }
    const list = (await (await app.request('/api/jobs', as(BOB))).json()) as { jobs: { jobId: string }[] }
    expect(list.jobs.map((j) => j.jobId)).not.toContain(jobId)
    expect((await app.request(`/api/status/${jobId}`)).status).toBe(401)
  })

  it('cancels a queued job: row, event and status; a second cancel is a 409', async () => {
    const { jobId } = (await (await submit(ALICE, voiceJob())).json()) as { jobId: string }
    const res = await app.request(`/api/jobs/${jobId}/cancel`, as(ALICE, { method: 'POST' }))
    expect(res.status).toBe(202)
    expect(await res.json()).toEqual({ jobId, status: 'cancelled', cancelRequested: true })
    expect(await queue.getJobState(jobId)).toBe('unknown')
    const body = (await (await app.request(`/api/status/${jobId}`, as(ALICE))).json()) as Record<
      string,
      unknown
    >
    expect(body).toMatchObject({ status: 'cancelled', error: { code: 'CANCELLED', reason: 'cancelled' } })
    const again = await app.request(`/api/jobs/${jobId}/cancel`, as(ALICE, { method: 'POST' }))
    expect(again.status).toBe(409)
    expect(await again.json()).toMatchObject({
      error: { code: 'conflict', message: 'job is already cancelled' },
    })
  })

  it('searches one’s own jobs by id prefix (?q=), and submits a batch in order', async () => {
    const batch = await app.request(
      '/api/jobs/batch',
      as(ALICE, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ jobs: [voiceJob(), voiceJob()] }),
      }),
    )
    expect(batch.status).toBe(202)
    type Jobs = { jobs: { jobId: string; status: string }[] }
    const { jobs } = (await batch.json()) as Jobs
    expect(jobs.map((j) => j.status)).toEqual(['queued', 'queued'])
    for (const { jobId } of jobs) {
      expect(await queue.getJobState(jobId)).toBe('waiting')
      const short = jobId.slice(0, 8)
      const mine = (await (await app.request(`/api/jobs?q=${short}`, as(ALICE))).json()) as Jobs
      expect(mine.jobs.map((j) => j.jobId)).toContain(jobId)
      const bobs = (await (await app.request(`/api/jobs?q=${short}`, as(BOB))).json()) as Jobs
      expect(bobs.jobs).toEqual([])
    }
    const long = await app.request(`/api/jobs?q=${'x'.repeat(201)}`, as(ALICE))
    expect(await long.json()).toMatchObject({ error: { code: 'invalid_query', issues: [{ path: 'q' }] } })
  })

  it('serves health without a token, and /ws only as an upgrade', async () => {
    expect(await (await app.request('/healthz')).json()).toEqual({ ok: true })
    expect((await app.request('/ws', as(ALICE))).status).toBe(404)
  })

  it('answers a method a route does not take 405 naming the ones it does, on every route', async () => {
    const { jobId } = (await (await submit(ALICE, voiceJob())).json()) as { jobId: string }
    const cases: [string, string, string][] = [
      ['GET', `/api/jobs/${jobId}/cancel`, 'POST'],
      ['GET', `/api/jobs/${jobId}/rerun`, 'POST'],
      ['DELETE', `/api/jobs/${jobId}/retry`, 'POST'],
      ['POST', `/api/jobs/${jobId}`, 'GET, HEAD'],
      ['PUT', '/api/hosts', 'GET, HEAD'],
      ['POST', '/api/queue', 'GET, HEAD'],
      ['GET', '/api/train', 'POST'],
      ['DELETE', '/api/jobs', 'GET, POST, HEAD'],
    ]
    for (const [method, path, allow] of cases) {
      const res = await app.request(path, as(ALICE, { method }))
      expect({ path, method, status: res.status, allow: res.headers.get('allow') }).toEqual({
        path,
        method,
        status: 405,
        allow,
      })
      expect(await res.json()).toMatchObject({ error: { code: 'method_not_allowed' } })
    }
    // Not even a job's existence is told by it: a 405 is the route's, whatever the id.
    expect((await app.request('/api/jobs/no-such-job/cancel', as(BOB))).status).toBe(405)
    expect((await app.request('/api/nothing', as(ALICE, { method: 'POST' }))).status).toBe(404)
  })

  it('answers a query parameter a route reads given twice 400 naming it, never reading only the first', async () => {
    const { jobId } = (await (await submit(ALICE, voiceJob())).json()) as { jobId: string }
    for (const [path, name] of [
      ['/api/jobs?status=queued&status=failed', 'status'],
      ['/api/jobs?limit=1&q=a&limit=500', 'limit'],
      [`/api/jobs/${jobId}/logs?attempt=1&attempt=2`, 'attempt'],
      [`/api/jobs/${jobId}/events?after=0&after=0`, 'after'],
    ] as const) {
      const res = await app.request(path, as(ALICE))
      expect({ path, status: res.status }).toEqual({ path, status: 400 })
      expect(await res.json()).toEqual({
        error: {
          code: 'invalid_query',
          message: `invalid query: ${name} must be given once`,
          issues: [{ path: name, message: 'must be given once' }],
        },
      })
    }
    expect((await app.request('/api/jobs?status=queued&limit=2', as(ALICE))).status).toBe(200)
    // A parameter no route reads is ignored however often it comes (the console page's, a probe's).
    for (const path of ['/?v=1&v=2', '/healthz?x=1&x=1', '/api/queue?x=1&x=2', '/api/jobs?v=1&v=2'])
      expect({ path, status: (await app.request(path, as(ALICE))).status }).toEqual({ path, status: 200 })
  })
})

describe('attempts, re-run and retry, through app.request()', () => {
  const post = (token: string, path: string) => app.request(path, as(token, { method: 'POST' }))
  const statusOf = async (token: string, jobId: string) =>
    (await (await app.request(`/api/jobs/${jobId}`, as(token))).json()) as Record<string, unknown>
  /** A submitted job made to look like one whose first attempt failed and that waits to retry. */
  async function retryingJob(): Promise<string> {
    const { jobId } = (await (await submit(ALICE, voiceJob())).json()) as { jobId: string }
    const job = await queue.getJob(jobId)
    await queue.remove(jobId)
    await queue.add('train_voice', job?.data, { jobId, delay: 3_600_000 })
    const startedAt = new Date(Date.now() - 5000)
    await database.db
      .update(jobs)
      .set({ status: 'retrying', attempt: 1, startedAt, nextAttemptAt: new Date(Date.now() + 3_600_000) })
      .where(eq(jobs.id, jobId))
    await database.db.insert(jobAttempts).values({
      jobId,
      attempt: 1,
      host: 'host-1',
      pid: 4242,
      startedAt,
      finishedAt: new Date(),
      outcome: 'retrying',
      reason: 'crash',
      message: 'exited with code 3',
    })
    return jobId
  }

  it('shows the attempts in the status body (none before the first), not in the list', async () => {
    const { jobId: queued } = (await (await submit(ALICE, voiceJob())).json()) as { jobId: string }
    expect((await statusOf(ALICE, queued)).attempts).toEqual([])
    const jobId = await retryingJob()
    const body = await statusOf(ALICE, jobId)
    expect(body.attempts).toEqual([
      {
        attempt: 1,
        hostId: 'host-1',
        pid: 4242,
        startedAt: expect.any(String),
        finishedAt: expect.any(String),
        outcome: 'failed',
        reason: 'crash',
        message: 'exited with code 3',
      },
    ])
    const list = (await (await app.request('/api/jobs?status=retrying', as(ALICE))).json()) as {
      jobs: Record<string, unknown>[]
    }
    expect(list.jobs.find((j) => j.jobId === jobId)).not.toHaveProperty('attempts')
  })

  it('re-runs a job as a new one with its type, params and options; another owner gets a 404', async () => {
    const res = await submit(ALICE, { ...voiceJob(), priority: 3, timeoutSec: 120, maxAttempts: 2 })
    const { jobId } = (await res.json()) as { jobId: string }
    expect((await post(BOB, `/api/jobs/${jobId}/rerun`)).status).toBe(404)
    const rerun = await post(ALICE, `/api/jobs/${jobId}/rerun`)
    expect(rerun.status).toBe(202)
    const created = (await rerun.json()) as Record<string, string>
    expect(created.jobId).not.toBe(jobId)
    expect(created).toEqual({
      jobId: created.jobId,
      status: 'queued',
      statusUrl: `/api/status/${created.jobId}`,
      streamUrl: `/ws?jobId=${created.jobId}`,
    })
    const [original, copy] = [await statusOf(ALICE, jobId), await statusOf(ALICE, created.jobId ?? '')]
    expect(copy).toMatchObject({ type: original.type, params: original.params, maxAttempts: 2 })
    const queued = await queue.getJob(created.jobId ?? '')
    expect(queued?.data).toMatchObject({ type: 'train_voice', priority: 3, timeoutSec: 120, maxAttempts: 2 })
    expect(queued?.opts.priority).toBe(3)
    expect((await statusOf(BOB, created.jobId ?? '')).error).toMatchObject({ code: 'not_found' })
  })

  it('starts a retrying job’s next attempt now; anything else is a 409 naming its status', async () => {
    const jobId = await retryingJob()
    expect((await post(BOB, `/api/jobs/${jobId}/retry`)).status).toBe(404)
    expect(await queue.getJobState(jobId)).toBe('delayed')
    const res = await post(ALICE, `/api/jobs/${jobId}/retry`)
    expect(res.status).toBe(202)
    expect(await res.json()).toEqual({ jobId, status: 'retrying' })
    expect(await queue.getJobState(jobId)).toBe('waiting')
    const due = Date.parse(String((await statusOf(ALICE, jobId)).nextAttemptAt))
    expect(due).toBeLessThanOrEqual(Date.now())
    const { jobId: queued } = (await (await submit(ALICE, voiceJob())).json()) as { jobId: string }
    const refused = await post(ALICE, `/api/jobs/${queued}/retry`)
    expect(refused.status).toBe(409)
    expect(await refused.json()).toMatchObject({
      error: { code: 'conflict', message: expect.stringContaining('job is queued, not retrying') },
    })
    expect((await post(ALICE, '/api/jobs/no-such-job/retry')).status).toBe(404)
  })

  it('a retry racing a cancel is never a 202 for a job that ends cancelled without its attempt', async () => {
    for (let round = 0; round < 8; round++) {
      const jobId = await retryingJob()
      const [retry, cancel] = await Promise.all([
        post(ALICE, `/api/jobs/${jobId}/retry`),
        post(ALICE, `/api/jobs/${jobId}/cancel`),
      ])
      expect(cancel.status).toBe(202)
      const body = (await retry.json()) as { status?: string; error?: { message: string } }
      // Either order is right; a 202 that says `cancelled` (no attempt will come of it) is not.
      if (retry.status === 202) expect(body.status).not.toBe('cancelled')
      else expect([retry.status, body.error?.message]).toEqual([409, expect.stringMatching(/cancelled/)])
      expect((await statusOf(ALICE, jobId)).status).toBe('cancelled')
    }
  })
})
