/** A producer's lifecycle steps against real Redis and an embedded Postgres: row, event, history. */
import { randomUUID } from 'node:crypto'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { eq } from 'drizzle-orm'
import { Redis } from 'ioredis'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { type Database, openDatabase } from '../db/connect.ts'
import { jobEvents, jobs } from '../db/tables.ts'
import { eventLogKey, seqKey } from '../keys.ts'
import { emitEvent, readEvents } from '../progress-log.ts'
import { JobRecords } from './records.ts'
import { announceQueued, cancelByRequest } from './requests.ts'

let dir: string
let database: Database
let records: JobRecords
let redis: Redis
const ids: string[] = []
beforeAll(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'requests-'))
  database = await openDatabase({ pgliteDir: dir })
  records = new JobRecords(database.db, { host: 'host-a' })
  redis = new Redis(process.env.TEST_REDIS_URL ?? 'redis://127.0.0.1:6379')
}, 120_000)
afterAll(async () => {
  if (ids.length) await redis.del(...ids.flatMap((id) => [seqKey(id), eventLogKey(id)]))
  redis?.disconnect()
  await database?.close()
  if (dir) await rm(dir, { recursive: true, force: true })
})

const queuedJob = async () => {
  const jobId = `req-${randomUUID()}`
  ids.push(jobId)
  const job = {
    jobId,
    type: 'train_lora' as const,
    params: { baseModel: 'sd15', datasetPath: 'ds' },
    maxAttempts: 3,
    outputPrefix: `loras/${jobId}`,
  }
  await records.ensureJob(job)
  return job
}
const rowOf = async (jobId: string) => {
  const [row] = await database.db.select().from(jobs).where(eq(jobs.id, jobId))
  if (!row) throw new Error('no row')
  return row
}
const history = (jobId: string) =>
  database.db.select().from(jobEvents).where(eq(jobEvents.jobId, jobId)).orderBy(jobEvents.seq)

/** A host's first event of `job` (its attempt started), before the producer's queued event. */
const hostStarted = (job: { jobId: string; type: 'train_lora' }) =>
  emitEvent(redis, {
    jobId: job.jobId,
    type: job.type,
    status: 'running',
    progress: 0,
    message: 'attempt 1/3 started',
    attempt: 1,
    timestamp: new Date().toISOString(),
  })

describe("a producer's lifecycle steps", () => {
  it('announces a queued job once, and not at all when a host emitted first', async () => {
    const job = await queuedJob()
    const [event] = await announceQueued({ redis, records }, [job])
    expect(event).toMatchObject({ seq: 1, status: 'queued', message: 'queued', attempt: 0 })
    expect((await history(job.jobId)).map((e) => [e.seq, e.status])).toEqual([[1, 'queued']])
    expect(await announceQueued({ redis, records }, [job])).toEqual([null])

    const raced = await queuedJob()
    await hostStarted(raced)
    expect(await announceQueued({ redis, records }, [raced])).toEqual([null])
    expect(await history(raced.jobId)).toEqual([])
  })

  it('announces many jobs at once, each with seq 1 and its history, skipping one a host emitted first', async () => {
    const batch = [await queuedJob(), await queuedJob(), await queuedJob()]
    const [, raced] = batch
    if (!raced) throw new Error('three jobs')
    await hostStarted(raced)
    const events = await announceQueued({ redis, records }, batch)
    expect(events.map((e) => e && [e.jobId, e.seq, e.status])).toEqual([
      [batch[0]?.jobId, 1, 'queued'],
      null,
      [batch[2]?.jobId, 1, 'queued'],
    ])
    for (const job of [batch[0], batch[2]]) {
      if (!job) continue
      expect((await history(job.jobId)).map((e) => [e.seq, e.status])).toEqual([[1, 'queued']])
      expect((await rowOf(job.jobId)).lastSeq).toBe(1)
      expect((await readEvents(redis, job.jobId)).map((e) => [e.seq, e.status])).toEqual([[1, 'queued']])
    }
    expect(await history(raced.jobId)).toEqual([])
    // The raced job's own events stay as the host wrote them.
    expect((await readEvents(redis, raced.jobId)).map((e) => [e.seq, e.status])).toEqual([[1, 'running']])
    expect(await announceQueued({ redis, records }, [])).toEqual([])
  })

  it('cancels a job no host runs: row cancelled, then a terminal event, then its history', async () => {
    const job = await queuedJob()
    await announceQueued({ redis, records }, [job])
    const row = await rowOf(job.jobId)
    let wrapped = 0
    const onRedis = <T>(fn: () => Promise<T>) => {
      wrapped += 1
      return fn()
    }
    expect(await cancelByRequest({ redis, records, onRedis }, row)).toBe(true)
    expect(wrapped).toBe(1)
    expect(await rowOf(job.jobId)).toMatchObject({
      status: 'cancelled',
      message: 'cancelled',
      error: { code: 'CANCELLED', reason: 'cancelled', message: 'cancelled by request' },
      lastSeq: 2,
    })
    expect((await readEvents(redis, job.jobId)).map((e) => [e.seq, e.status, e.message])).toEqual([
      [1, 'queued', 'queued'],
      [2, 'cancelled', 'cancelled'],
    ])
    expect((await history(job.jobId)).map((e) => e.status)).toEqual(['queued', 'cancelled'])
    expect(await redis.ttl(eventLogKey(job.jobId))).toBeGreaterThan(0)
  })

  it('publishes nothing when the row is final already', async () => {
    const job = await queuedJob()
    const row = await rowOf(job.jobId)
    expect(await records.startAttempt(job.jobId)).toBeTruthy()
    expect(
      await records.finishAttempt(job.jobId, 1, { status: 'completed', progress: 100, message: 'done' }),
    ).toBe(true)
    expect(await cancelByRequest({ redis, records }, row)).toBe(false)
    expect(await readEvents(redis, job.jobId)).toEqual([])
    expect(await history(job.jobId)).toEqual([])
  })
})
