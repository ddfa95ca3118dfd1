/** The SQL writer's guards against a real (embedded) Postgres: they say what `mayWrite` says, row by row. */
import { randomUUID } from 'node:crypto'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { eq } from 'drizzle-orm'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { JOB_STATUSES } from '../common.ts'
import { type Database, openDatabase } from '../db/connect.ts'
import { jobs } from '../db/tables.ts'
import { retryWhileDown } from './db-call.ts'
import { CancelledError, NotQueuedError } from './errors.ts'
import { mayWrite, type RowWrite } from './lifecycle.ts'
import { JobRecords } from './records.ts'

let dir: string
let database: Database
let records: JobRecords
beforeAll(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'records-'))
  database = await openDatabase({ pgliteDir: dir })
  records = new JobRecords(database.db, { host: 'host-a' })
}, 120_000)
afterAll(async () => {
  await database?.close()
  if (dir) await rm(dir, { recursive: true, force: true })
})

const newJob = () => ({
  jobId: `rec-${randomUUID()}`,
  type: 'train_lora' as const,
  params: { baseModel: 'sd15', datasetPath: 'ds' },
  maxAttempts: 3,
  outputPrefix: 'loras/x',
})

describe('the guards of the row writer', () => {
  it('match mayWrite for every status, attempt and write', async () => {
    const writes: RowWrite[] = []
    for (const attempt of [1, 2]) {
      writes.push({ kind: 'progress', attempt }, { kind: 'finish', attempt })
      for (const status of JOB_STATUSES) writes.push({ kind: 'lost', status, attempt })
    }
    writes.push({ kind: 'start' }, { kind: 'cancel' }, { kind: 'waiting' })
    for (const status of JOB_STATUSES) {
      const job = newJob()
      await records.ensureJob(job)
      await database.db.update(jobs).set({ status, attempt: 2 }).where(eq(jobs.id, job.jobId))
      for (const write of writes)
        expect(
          { status, write, sql: await records.mayWrite(job.jobId, write) },
          `${status} ${JSON.stringify(write)}`,
        ).toEqual({ status, write, sql: mayWrite({ status, attempt: 2 }, write) })
    }
  })

  it("refuses a stale attempt's end and keeps a terminal state final", async () => {
    const job = newJob()
    await records.ensureJob(job)
    expect((await records.startAttempt(job.jobId))?.attempt).toBe(1)
    expect((await records.startAttempt(job.jobId))?.attempt).toBe(2)
    const end = { status: 'failed' as const, progress: 10, message: 'late' }
    expect(await records.finishAttempt(job.jobId, 1, end)).toBe(false)
    expect(await records.finishAttempt(job.jobId, 2, { ...end, message: 'done' })).toBe(true)
    expect(await records.cancel(job.jobId, new CancelledError('x').toJobError(), 'x')).toBe(false)
    expect(await records.startAttempt(job.jobId)).toBeNull()
    expect(await records.markLost({ id: job.jobId, status: 'failed', attempt: 2 }, 0, end)).toBe(false)
    const [row] = await database.db.select().from(jobs).where(eq(jobs.id, job.jobId))
    expect(row).toMatchObject({ status: 'failed', message: 'done', attempt: 2 })
  })

  it('claims a job once, within the owner quota', async () => {
    const owner = `o-${randomUUID()}`
    const first = { ...newJob(), owner }
    expect(await records.claim(first, 1)).toMatchObject({ row: { id: first.jobId, status: 'queued' } })
    expect(await records.claim(first, 1)).toMatchObject({ existing: { id: first.jobId } })
    expect(await records.claim({ ...newJob(), owner }, 1)).toEqual({ overQuota: true })
  })

  it('removes a NOT_QUEUED tombstone only', async () => {
    const job = newJob()
    await records.ensureJob(job)
    await records.cancel(job.jobId, new CancelledError('by request').toJobError(), 'cancelled')
    await records.removeNotQueued(job.jobId)
    expect(await database.db.select().from(jobs).where(eq(jobs.id, job.jobId))).toHaveLength(1)
    const tombstone = newJob()
    await records.ensureJob(tombstone)
    await records.cancel(tombstone.jobId, new NotQueuedError().toJobError(), 'not queued')
    await records.removeNotQueued(tombstone.jobId)
    expect(await database.db.select().from(jobs).where(eq(jobs.id, tombstone.jobId))).toHaveLength(0)
  })

  it('makes a retrying job due now, and only a retrying one', async () => {
    for (const status of JOB_STATUSES) {
      const job = newJob()
      await records.ensureJob(job)
      const later = new Date(Date.now() + 3_600_000)
      await database.db.update(jobs).set({ status, nextAttemptAt: later }).where(eq(jobs.id, job.jobId))
      const before = Date.now()
      const row = await records.retryNow(job.jobId)
      if (status !== 'retrying') {
        expect(row, status).toBeNull()
        continue
      }
      expect(row?.status).toBe('retrying')
      const due = row?.nextAttemptAt?.getTime() ?? Number.NaN
      expect(due).toBeGreaterThanOrEqual(before - 1000)
      expect(due).toBeLessThan(later.getTime())
    }
  })
})

describe('retryWhileDown', () => {
  it('retries a connection failure with backoff and throws anything else at once', async () => {
    const lines: string[] = []
    const call = retryWhileDown((m) => lines.push(m))
    let tries = 0
    const value = await call('probe', async () => {
      tries += 1
      if (tries < 3) throw Object.assign(new Error('connect ECONNREFUSED'), { code: 'ECONNREFUSED' })
      return 'ok'
    })
    expect({ value, tries }).toEqual({ value: 'ok', tries: 3 })
    expect(lines).toEqual([
      'postgres unavailable (probe): retrying in 200 ms',
      'postgres unavailable (probe): retrying in 400 ms',
    ])
    await expect(
      call('bad', async () => {
        throw new Error('syntax error')
      }),
    ).rejects.toThrow('syntax error')
  })
})
