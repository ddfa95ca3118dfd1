/**
 * `GET /api/hosts` and `GET /api/queue` on whole stacks: a real host's heartbeat with its slots, engines
 * and running job; a host that stops beating shown gone, then dropped; a clean stop gone at once; with
 * API tokens, other tokens' job ids hidden and the row counts the caller's own; the queue's counts
 * against the jobs and rows the test made; Redis or Postgres down, a 503 that names it.
 */
import { randomUUID } from 'node:crypto'
import { eq } from 'drizzle-orm'
import * as v from 'valibot'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { startGateway } from '../../gateway/server.ts'
import { Heartbeat, type HeartbeatSource } from '../../gpu-host/heartbeat.ts'
import { createS3Client } from '../../schema/clients.ts'
import { openDatabase } from '../../schema/db/connect.ts'
import { jobs } from '../../schema/db/tables.ts'
import { type HostEntry, HostsBody, KEEP_BEATS } from '../../schema/hosts.ts'
import { hostKey, hostsKey } from '../../schema/keys.ts'
import { QueueBody } from '../../schema/queue.ts'
import {
  addFixtureJob,
  FIXTURE_DISPATCH,
  isolatedDatabase,
  quietLogger,
  type Stack,
  startHost,
  startStack,
  TERMINAL,
  TEST_REDIS_URL,
  waitFor,
} from '../helpers/stack.ts'
import { startTcpProxy } from '../helpers/tcp-proxy.ts'

const BEAT_MS = 100

/** A host that beats from this test alone (no slots, no job), as a host that dies would leave it. */
const playedHost = (hostId: string, jobIds: string[] = []): HeartbeatSource => ({
  hostId,
  version: '0.0.1',
  startedAt: Date.now(),
  closing: () => false,
  slots: () => [],
  usage: () => ({ totalMb: null, otherMb: 0, reservedMb: 0, freeMb: null, jobs: 0, exclusive: false }),
  gpus: () => [],
  engines: () => ({ train_lora: ['simulate'], train_voice: ['simulate'], render_video: ['simulate'] }),
  jobs: () =>
    jobIds.map((jobId) => ({
      jobId,
      type: 'train_lora' as const,
      cancelRequested: false,
      proc: undefined,
      reporter: undefined,
      attempt: 1,
      startedAt: Date.now(),
    })),
})

async function getJson<T>(stack: Stack, path: string, schema: v.GenericSchema<T>, token?: string) {
  const res = await fetch(stack.url(path), token ? { headers: { authorization: `Bearer ${token}` } } : {})
  expect(res.status, path).toBe(200)
  return v.parse(schema, await res.json())
}

const hostsOf = (stack: Stack, token?: string) =>
  getJson(stack, '/api/hosts', HostsBody, token).then((b) => b.hosts)
const hostIn = (stack: Stack, hostId: string) =>
  hostsOf(stack).then((hosts) => hosts.find((h) => h.hostId === hostId))

describe('GET /api/hosts', () => {
  let stack: Stack

  beforeAll(async () => {
    stack = await startStack({
      handlerModules: { train_lora: FIXTURE_DISPATCH },
      heartbeatMs: BEAT_MS,
      env: { GPU_SLOTS: '2' },
    })
  })
  afterAll(async () => {
    await stack?.close()
  })

  it('shows the stack’s host with its slots, GPUs and engines', async () => {
    const host = await waitFor(() => hostIn(stack, stack.config.hostId), 5000, 'the host')
    expect(host).toMatchObject({ status: 'up', version: '0.1.0', pid: process.pid, intervalMs: BEAT_MS })
    expect(host.lastSeenSec).toBeLessThan(5)
    // Two virtual slots here; one slot per GPU where nvidia-smi reports GPUs.
    const slots = host.gpus.length > 0 ? host.gpus.length : 2
    expect(host.slots).toMatchObject({ total: slots, busy: 0, free: slots })
    expect(host.slots.list).toHaveLength(slots)
    for (const type of ['train_lora', 'train_voice', 'render_video'] as const)
      expect(host.engines[type]).toContain('simulate')
    expect(host.jobs).toEqual([])
  })

  it('shows a running job on its slot while it runs, and not after', async () => {
    const jobId = await addFixtureJob(stack, 'hangs', { timeoutSec: 60, maxAttempts: 1 })
    const host = await waitFor(
      async () => {
        const h = await hostIn(stack, stack.config.hostId)
        return h?.jobs.some((j) => j.jobId === jobId && j.slot !== null) ? h : null
      },
      10_000,
      'the running job in the heartbeat',
    )
    const job = host.jobs.find((j) => j.jobId === jobId)
    expect(job).toMatchObject({ type: 'train_lora', attempt: 1 })
    expect(Date.parse(job?.startedAt ?? '')).toBeLessThanOrEqual(Date.now())
    expect(host.slots.busy).toBe(1)
    const cancel = await fetch(stack.url(`/api/jobs/${jobId}/cancel`), { method: 'POST' })
    expect(cancel.status).toBe(202)
    await stack.waitStatus(jobId, TERMINAL)
    await waitFor(
      async () => {
        const h = await hostIn(stack, stack.config.hostId)
        return h && h.jobs.length === 0 && h.slots.busy === 0
      },
      5000,
      'the job to leave the heartbeat',
    )
  })

  it('shows a host that stops beating as gone, then drops it when its key expires', async () => {
    const hostId = `${stack.prefix}-dead`
    const hb = new Heartbeat(stack.redis, stack.config.queuePrefix, playedHost(hostId), {
      intervalMs: BEAT_MS,
    })
    hb.start()
    expect((await waitFor(() => hostIn(stack, hostId), 2000, 'the played host'))?.status).toBe('up')
    // What a host that dies leaves: its key, no more beats.
    await hb.stop({ remove: false })
    const gone = await waitFor(
      async () => {
        const h = await hostIn(stack, hostId)
        return h?.status === 'gone' ? h : null
      },
      2000,
      'the host to be shown gone',
    )
    expect(gone.lastSeenSec).toBeGreaterThanOrEqual((3 * BEAT_MS) / 1000)
    await waitFor(
      async () => (await hostIn(stack, hostId)) === undefined,
      KEEP_BEATS * BEAT_MS + 3000,
      'drop',
    )
  })

  it('drops a host that stops cleanly at once', async () => {
    const host = await startHost(stack, { heartbeatMs: BEAT_MS })
    await waitFor(() => hostIn(stack, host.hostId), 5000, 'the second host')
    expect((await hostsOf(stack)).map((h) => h.hostId)).toEqual(
      [stack.config.hostId, host.hostId].sort((a, b) => a.localeCompare(b)),
    )
    await host.close()
    expect(await hostIn(stack, host.hostId)).toBeUndefined()
  })

  it('leaves out a key that is not a heartbeat, rather than failing the list', async () => {
    const hostId = `${stack.prefix}-garbage`
    await stack.redis.set(hostKey(stack.config.queuePrefix, hostId), '{"hostId": 3}', 'PX', 10_000)
    await stack.redis.zadd(hostsKey(stack.config.queuePrefix), Date.now() + 10_000, hostId)
    const hosts = await hostsOf(stack)
    expect(hosts.map((h) => h.hostId)).not.toContain(hostId)
    expect(hosts.map((h) => h.hostId)).toContain(stack.config.hostId)
    await stack.redis.zrem(hostsKey(stack.config.queuePrefix), hostId)
  })
})

describe('GET /api/queue', () => {
  let stack: Stack
  let iso: Awaited<ReturnType<typeof isolatedDatabase>>

  beforeAll(async () => {
    // A database of its own: the row counts are this test's alone. No host: the jobs stay queued.
    iso = await isolatedDatabase()
    stack = await startStack({ withHost: false, databaseUrl: iso.url })
  })
  afterAll(async () => {
    await stack?.close()
    await iso?.drop()
  })

  it('counts BullMQ’s states, the unfinished rows by type, the oldest waiting and the last hour', async () => {
    const params = { baseModel: 'sd15', datasetPath: 'ds', epochs: 1 }
    for (const body of [
      { type: 'train_lora', params },
      { type: 'train_lora', params },
      { type: 'train_voice', params: { speakerName: 'ann', datasetPath: 'ds' }, priority: 1 },
    ])
      expect((await stack.post(body)).status).toBe(202)
    const rows: [string, 'running' | 'retrying' | 'completed' | 'failed', number | null][] = [
      ['r-running', 'running', null],
      ['r-retrying', 'retrying', null],
      ['r-done', 'completed', 10_000],
      ['r-failed', 'failed', 20_000],
      ['r-old', 'completed', 2 * 3_600_000],
    ]
    for (const [id, status, ago] of rows) {
      await stack.insertJob(id, status)
      if (ago !== null)
        await stack.database.db
          .update(jobs)
          .set({ finishedAt: new Date(Date.now() - ago) })
          .where(eq(jobs.id, id))
    }
    const q = await getJson(stack, '/api/queue', QueueBody)
    expect(q.byState).toMatchObject({ waiting: 2, prioritized: 1, active: 0, delayed: 0, failed: 0 })
    expect(q.byType).toEqual({
      train_lora: { queued: 2, running: 1, retrying: 1 },
      train_voice: { queued: 1, running: 0, retrying: 0 },
      render_video: { queued: 0, running: 0, retrying: 0 },
    })
    expect(q.lastHour).toEqual({ completed: 1, failed: 1 })
    expect(q.oldestWaitingSec).toBeGreaterThan(0)
    expect(q.oldestWaitingSec).toBeLessThan(60)
  })

  it('counts a queued job a host put back (BullMQ delayed: no host had its engine) as waiting', async () => {
    // What a host without the job's engine does: back in the queue, due later. Its row stays queued.
    for (const job of await stack.queue.getJobs(['wait', 'prioritized'])) {
      await stack.queue.remove(job.id ?? '')
      await stack.queue.add(job.name, job.data, { jobId: job.id, delay: 3_600_000 })
    }
    const q = await getJson(stack, '/api/queue', QueueBody)
    expect(q.byState).toMatchObject({ waiting: 0, prioritized: 0, delayed: 3 })
    expect(q.byType.train_lora.queued).toBe(2)
    expect(q.oldestWaitingSec).toBeGreaterThan(0)
    expect(q.oldestWaitingSec).toBeLessThan(60)
  })

  /**
   * A gateway whose Redis or Postgres goes through a TCP proxy the test cuts. One gateway per backend, and no
   * restore: a cut proxy's port, once freed, may be taken before it could listen again.
   */
  async function gatewayBehind(backend: 'redis' | 'postgres') {
    const proxy = await startTcpProxy(
      Number(
        new URL(backend === 'redis' ? TEST_REDIS_URL : iso.url).port || (backend === 'redis' ? 6379 : 5432),
      ),
    )
    const pgUrl = new URL(iso.url)
    if (backend === 'postgres') pgUrl.port = String(proxy.port)
    const database = await openDatabase({ url: pgUrl.toString(), poolSize: 2 })
    const s3 = createS3Client({ ...stack.config.s3, endpoint: stack.s3.endpoint })
    const redisUrl = backend === 'redis' ? `redis://127.0.0.1:${proxy.port}` : stack.config.redisUrl
    const gw = await startGateway({
      config: { ...stack.config, gatewayPort: 0, redisUrl },
      database,
      s3,
      logger: quietLogger(),
    })
    const answer = async (path: string) => {
      const res = await fetch(`${gw.url}${path}`)
      return { status: res.status, body: (await res.json()) as { error?: { code: string; message: string } } }
    }
    const close = async () => {
      await gw.close()
      await database.close()
      s3.destroy()
      await proxy.close()
    }
    return { proxy, answer, close }
  }

  it('answers 503 naming Redis when Redis is down, never a 500', async () => {
    const g = await gatewayBehind('redis')
    try {
      expect((await g.answer('/api/queue')).status).toBe(200)
      await g.proxy.cut()
      for (const path of ['/api/hosts', '/api/queue']) {
        const down = await g.answer(path)
        expect(down.status, path).toBe(503)
        expect(down.body.error?.code).toBe('backend_unavailable')
        expect(down.body.error?.message).toMatch(/^Redis is unavailable/)
      }
    } finally {
      await g.close()
    }
  })

  it('answers 503 naming Postgres when Postgres is down; the host list needs no row', async () => {
    const g = await gatewayBehind('postgres')
    try {
      expect((await g.answer('/api/queue')).status).toBe(200)
      await g.proxy.cut()
      const down = await g.answer('/api/queue')
      expect(down.status).toBe(503)
      expect(down.body.error?.code).toBe('backend_unavailable')
      expect(down.body.error?.message).toMatch(/^Postgres is unavailable/)
      // Without API tokens the host list reads no row.
      expect((await g.answer('/api/hosts')).status).toBe(200)
    } finally {
      await g.close()
    }
  })
})

describe('with API tokens', () => {
  let stack: Stack
  const tag = randomUUID().slice(0, 6)
  const alice = { name: `alice${tag}`, token: `alice-${randomUUID()}` }
  const bob = { name: `bob${tag}`, token: `bob-${randomUUID()}` }

  beforeAll(async () => {
    stack = await startStack({
      withHost: false,
      env: { API_TOKENS: `${alice.name}:${alice.token},${bob.name}:${bob.token}` },
    })
  })
  afterAll(async () => {
    await stack?.close()
  })

  it('needs a token for both routes', async () => {
    for (const path of ['/api/hosts', '/api/queue']) expect((await fetch(stack.url(path))).status).toBe(401)
  })

  it('shows every host to every token, and a running job only to its owner (its slot busy to all)', async () => {
    const [mine, theirs] = [`${alice.name}.job-${tag}`, `${bob.name}.job-${tag}`]
    await stack.insertJob(mine, 'running', alice.name)
    await stack.insertJob(theirs, 'running', bob.name)
    const hostId = `${stack.prefix}-shared`
    const hb = new Heartbeat(stack.redis, stack.config.queuePrefix, playedHost(hostId, [mine, theirs]))
    await hb.beat()
    // Another token's job is left out whole (not only its id: its type, attempt, progress and start too).
    const seen = async (token: string) =>
      ((await hostsOf(stack, token)).find((h) => h.hostId === hostId) as HostEntry).jobs.map((j) => j.jobId)
    expect(await seen(alice.token)).toEqual([mine])
    expect(await seen(bob.token)).toEqual([theirs])
    await hb.stop()
    await stack.database.db.delete(jobs).where(eq(jobs.owner, alice.name))
    await stack.database.db.delete(jobs).where(eq(jobs.owner, bob.name))
  })

  it('counts the caller’s own rows; BullMQ’s counts are the fleet’s', async () => {
    await stack.insertJob(`${alice.name}.q1`, 'queued', alice.name)
    await stack.insertJob(`${alice.name}.r1`, 'retrying', alice.name)
    await stack.insertJob(`${bob.name}.q1`, 'queued', bob.name)
    await stack.insertJob(`${bob.name}.q2`, 'queued', bob.name)
    await stack.queue.add('train_lora', { jobId: 'fleet-1' }, { jobId: 'fleet-1' })
    const a = await getJson(stack, '/api/queue', QueueBody, alice.token)
    const b = await getJson(stack, '/api/queue', QueueBody, bob.token)
    expect(a.byType.train_lora).toEqual({ queued: 1, running: 0, retrying: 1 })
    expect(b.byType.train_lora).toEqual({ queued: 2, running: 0, retrying: 0 })
    expect(a.byState.waiting).toBe(1)
    expect(b.byState.waiting).toBe(1)
    await stack.database.db.delete(jobs).where(eq(jobs.owner, alice.name))
    await stack.database.db.delete(jobs).where(eq(jobs.owner, bob.name))
  })
})
