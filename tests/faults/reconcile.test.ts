/**
 * Redis lost its data: job rows stay unfinished with no BullMQ job behind them. The host's reconciler
 * adds a job with attempts left again from its row, and fails one without with reason `lost`; the event
 * is published and recorded; a row written within the grace period, or held by another host's lock, is
 * left alone; a concurrent write wins.
 */
import { setTimeout as sleep } from 'node:timers/promises'
import { PutObjectCommand } from '@aws-sdk/client-s3'
import type { Queue } from 'bullmq'
import { eq } from 'drizzle-orm'
import type { Redis } from 'ioredis'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { Reconciler } from '../../gpu-host/reconciler.ts'
import { JobState } from '../../gpu-host/state.ts'
import { createRedis } from '../../schema/clients.ts'
import { jobEvents, jobs } from '../../schema/db/tables.ts'
import type { ProgressEvent } from '../../schema/events.ts'
import { eventLogKey, QUEUE_NAME, seqKey } from '../../schema/keys.ts'
import { isolatedDatabase, quietLogger, type Stack, startStack, waitFor } from '../helpers/stack.ts'

let stack: Stack
let subscriber: Redis
const published: ProgressEvent[] = []
// A database of its own: the reconciler takes every unfinished row of its database as one of its queue's
// (one database per queue), and the other tests share theirs across queue prefixes.
let db: Awaited<ReturnType<typeof isolatedDatabase>> | undefined

beforeAll(async () => {
  db = await isolatedDatabase()
  // The host is started by the test, after the loss.
  stack = await startStack({
    withHost: false,
    databaseUrl: db.url,
    reconciler: { intervalMs: 200, graceMs: 300 },
  })
  subscriber = createRedis(stack.config.redisUrl)
  await subscriber.connect()
  await subscriber.psubscribe('progress:*')
  subscriber.on('pmessage', (_p: string, _c: string, raw: string) => {
    published.push(JSON.parse(raw) as ProgressEvent)
  })
})
afterAll(async () => {
  subscriber?.disconnect()
  await stack?.host.close()
  await stack?.close()
  await db?.drop()
})

/** What Redis data loss does to one job: its BullMQ job and its event keys are gone. */
async function loseFromRedis(queue: Queue, redis: Redis, jobId: string): Promise<void> {
  await queue.remove(jobId)
  expect(await queue.getJob(jobId)).toBeUndefined()
  await redis.del(seqKey(jobId), eventLogKey(jobId))
}

const recorded = (jobId: string) =>
  stack.database.db.select().from(jobEvents).where(eq(jobEvents.jobId, jobId)).orderBy(jobEvents.seq)

const lora = { type: 'train_lora', params: { baseModel: 'sd15', datasetPath: 'ds', epochs: 1, rank: 4 } }

describe('reconciling jobs the queue lost', () => {
  it('re-queues one with attempts left (it then completes) and fails one without (reason lost), with events', async () => {
    const gpu = { vramMb: 0, exclusive: false }
    const { json: a } = await stack.post({ ...lora, priority: 3, timeoutSec: 120, maxAttempts: 2, gpu })
    const requeueId = a.jobId as string
    const { json: b } = await stack.post({ ...lora, maxAttempts: 1 })
    const failId = b.jobId as string
    // The second was running on a host that is gone too: attempt 1 of 1 started, never ended.
    const deadHost = new JobState(stack.database.db, `${stack.prefix}-dead-host`)
    expect(await deadHost.startAttempt(failId)).toBeTruthy()
    await stack.s3.client.send(
      new PutObjectCommand({ Bucket: stack.config.s3.bucket, Key: `loras/${failId}/partial.bin`, Body: 'x' }),
    )
    const seqBefore = await waitFor(
      async () => (await stack.database.db.select().from(jobs).where(eq(jobs.id, failId)))[0]?.lastSeq ?? 0,
      5000,
      'the queued event seq on the row',
    )
    for (const id of [requeueId, failId]) await loseFromRedis(stack.queue, stack.redis, id)
    // Past the grace period: no gateway is about to add them.
    await sleep(400)

    await stack.host.start()

    // The terminal event comes last (after the row and the removal of partial files).
    await waitFor(
      async () => published.some((e) => e.jobId === failId && e.status === 'failed'),
      15_000,
      'the failed event',
    )
    const failed = await stack.waitStatus(failId, ['failed'], 1000)
    expect(failed.error).toMatchObject({ code: 'LOST', reason: 'lost' })
    expect(failed.finishedAt).not.toBeNull()
    const [attempt] = await stack.attempts(failId)
    expect(attempt).toMatchObject({ outcome: 'failed', reason: 'lost' })
    expect(await stack.keysUnder(`loras/${failId}`)).toEqual([])

    const done = await stack.waitStatus(requeueId, ['completed', 'failed'], 30_000)
    expect(done).toMatchObject({ status: 'completed', attempt: 1, maxAttempts: 2 })
    // Re-added from the row: same id, options and params.
    const bull = await stack.queue.getJob(requeueId)
    expect(bull?.opts.priority).toBe(3)
    expect(bull?.data).toMatchObject({
      jobId: requeueId,
      type: 'train_lora',
      timeoutSec: 120,
      maxAttempts: 2,
      gpu,
      params: lora.params,
      artifacts: { outputPrefix: `loras/${requeueId}` },
    })

    // Published and recorded in the history.
    const lostEvent = published.find((e) => e.jobId === failId && e.status === 'failed')
    expect(lostEvent?.message).toContain('lost')
    const failHistory = await recorded(failId)
    expect(failHistory.at(-1)).toMatchObject({ status: 'failed', seq: lostEvent?.seq })
    // Redis lost the seq counter too: seq goes on from the row's, never back to 1.
    expect(lostEvent?.seq).toBeGreaterThan(seqBefore)
    const requeued = published.find(
      (e) => e.jobId === requeueId && e.status === 'queued' && e.message.includes('lost'),
    )
    expect(requeued?.message).toContain('queued again')
    expect((await recorded(requeueId)).some((e) => e.seq === requeued?.seq && e.status === 'queued')).toBe(
      true,
    )

    const metrics = await (await fetch(`http://127.0.0.1:${stack.host.port}/metrics`)).text()
    expect(metrics).toMatch(/^gpu_worker_jobs_reconciled_total\{type="train_lora",action="requeued"\} 1$/m)
    expect(metrics).toMatch(/^gpu_worker_jobs_reconciled_total\{type="train_lora",action="failed"\} 1$/m)
    expect(metrics).toMatch(/^gpu_worker_jobs_reconciled_total\{type="render_video",action="failed"\} 0$/m)
  })

  describe('what it leaves alone', () => {
    let reconcilerRedis: Redis
    const reconciler = (graceMs: number) =>
      new Reconciler(
        {
          redis: reconcilerRedis,
          queue: stack.queue,
          state: new JobState(stack.database.db, 'test'),
          s3: stack.s3.client,
          bucket: stack.config.s3.bucket,
          queuePrefix: `${stack.prefix}-alone`,
          hostId: 'test',
          metrics: stack.host.metrics,
          logger: quietLogger(),
          isLocal: () => false,
        },
        { graceMs },
      )
    beforeAll(async () => {
      reconcilerRedis = createRedis(stack.config.redisUrl)
      await reconcilerRedis.connect()
      // The started host reconciles this stack's queue too: keep its passes out of these checks.
      await stack.host.close()
    })
    afterAll(() => reconcilerRedis?.disconnect())

    it('a row written within the grace period (a gateway about to add its job) is not touched', async () => {
      const { json } = await stack.post(lora)
      const jobId = json.jobId as string
      await stack.queue.remove(jobId)
      const report = await reconciler(60_000).runOnce()
      expect(report?.requeued).not.toContain(jobId)
      expect(report?.failed).not.toContain(jobId)
      const [row] = await stack.database.db.select().from(jobs).where(eq(jobs.id, jobId))
      expect(row?.status).toBe('queued')
      expect(await stack.queue.getJob(jobId)).toBeUndefined()
    })

    it('one host at a time: a pass while another holds the lock does nothing', async () => {
      const lockKey = `${stack.prefix}-alone:${QUEUE_NAME}:reconciler:lock`
      await reconcilerRedis.set(lockKey, 'another-host', 'PX', 10_000)
      expect(await reconciler(0).runOnce()).toBeNull()
      await reconcilerRedis.del(lockKey)
      expect(await reconciler(60_000).runOnce()).not.toBeNull()
    })

    it('a concurrent write wins: a row touched after it was read is not rewritten', async () => {
      const { json } = await stack.post(lora)
      const jobId = json.jobId as string
      const state = new JobState(stack.database.db, 'test')
      const [row] = await stack.database.db.select().from(jobs).where(eq(jobs.id, jobId))
      if (!row) throw new Error('no row')
      // A host starts it meanwhile (status and attempt change, the row is fresh).
      await state.startAttempt(jobId)
      expect(await state.markLost(row, 0, { status: 'queued', message: 'x' })).toBe(false)
      const [after] = await stack.database.db.select().from(jobs).where(eq(jobs.id, jobId))
      expect(after).toMatchObject({ status: 'running', attempt: 1 })
    })
  })
})
