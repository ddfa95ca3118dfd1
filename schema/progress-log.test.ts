import { randomUUID } from 'node:crypto'
import { setTimeout as sleep } from 'node:timers/promises'
import { Redis } from 'ioredis'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { eventLogKey, progressChannel, seqKey } from './keys.ts'
import { EVENT_LOG_TTL_SEC, emitEvent, lastEvent, readEvents } from './progress-log.ts'

const url = process.env.TEST_REDIS_URL ?? 'redis://127.0.0.1:6379'
let redis: Redis
let sub: Redis
beforeAll(async () => {
  redis = new Redis(url)
  sub = new Redis(url)
})
afterAll(async () => {
  redis.disconnect()
  sub.disconnect()
})

const base = (jobId: string, i: number) => ({
  jobId,
  status: 'running' as const,
  progress: i,
  message: `step ${i}`,
  timestamp: new Date().toISOString(),
  type: 'train_lora' as const,
  attempt: 1,
})

describe('the event log', () => {
  it('gives seq 1, 2, 3... and publishes, logs and numbers events in one order, even when emitted concurrently', async () => {
    const jobId = `log-${randomUUID()}`
    const received: string[] = []
    await sub.subscribe(progressChannel(jobId))
    sub.on('message', (_c, m) => received.push(m))
    const emitted = await Promise.all(Array.from({ length: 50 }, (_, i) => emitEvent(redis, base(jobId, i))))
    expect(emitted.map((e) => e.seq).sort((a, b) => a - b)).toEqual(
      Array.from({ length: 50 }, (_, i) => i + 1),
    )
    await sleep(100)
    const published = received.map((m) => JSON.parse(m) as { seq: number })
    expect(published.map((e) => e.seq)).toEqual(Array.from({ length: 50 }, (_, i) => i + 1))
    // The published JSON keeps the contract's field order.
    expect(Object.keys(JSON.parse(received[0] ?? '{}'))).toEqual([
      'jobId',
      'status',
      'progress',
      'message',
      'timestamp',
      'seq',
      'type',
      'attempt',
    ])
    expect((await readEvents(redis, jobId, 45)).map((e) => e.seq)).toEqual([46, 47, 48, 49, 50])
    expect((await lastEvent(redis, jobId))?.seq).toBe(50)
    await sub.unsubscribe(progressChannel(jobId))
    await redis.del(seqKey(jobId), eventLogKey(jobId))
  })

  it('expires a finished job’s log, and an empty log has no last event', async () => {
    const jobId = `log-${randomUUID()}`
    expect(await lastEvent(redis, jobId)).toBeNull()
    await emitEvent(redis, { ...base(jobId, 100), status: 'completed' }, { terminal: true })
    const ttl = await redis.ttl(eventLogKey(jobId))
    expect(ttl).toBeGreaterThan(EVENT_LOG_TTL_SEC - 10)
    await redis.del(seqKey(jobId), eventLogKey(jobId))
  })
})
