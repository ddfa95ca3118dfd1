/** The SQL writer's guards against a real (embedded) Postgres: they say what `mayWrite` says, row by row. */
import { randomUUID } from 'node:crypto'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { eq, inArray } from 'drizzle-orm'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { JOB_STATUSES } from '../common.ts'
import { type Database, openDatabase } from '../db/connect.ts'
import { jobAttempts, jobs } from '../db/tables.ts'
import { retryWhileDown } from './db-call.ts'
import { CancelledError, NotQueuedError } from './errors.ts'
import { mayWrite, type RowWrite } from './lifecycle.ts'
import { JobRecords } from './records.ts'
import { rowOf } from './row-writes.ts'

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

  it("clears an earlier attempt's error when a later one completes; the attempt keeps it", async () => {
    const job = newJob()
    await records.ensureJob(job)
    await records.startAttempt(job.jobId)
    const timeout = {
      code: 'TIMEOUT',
      reason: 'timeout' as const,
      message: 'job timed out after 3s',
      retryable: true,
    }
    const retrying = {
      status: 'retrying' as const,
      progress: 40,
      message: 'attempt 1 failed',
      error: timeout,
    }
    expect(await records.finishAttempt(job.jobId, 1, retrying)).toBe(true)
    const [waiting] = await database.db.select().from(jobs).where(eq(jobs.id, job.jobId))
    expect(waiting?.error).toMatchObject({ code: 'TIMEOUT' })
    await records.startAttempt(job.jobId)
    expect(
      await records.finishAttempt(job.jobId, 2, { status: 'completed', progress: 100, message: 'done' }),
    ).toBe(true)
    const [row] = await database.db.select().from(jobs).where(eq(jobs.id, job.jobId))
    expect(row).toMatchObject({ status: 'completed', error: null })
    const [first] = await database.db.select().from(jobAttempts).where(eq(jobAttempts.jobId, job.jobId))
    expect(first).toMatchObject({ attempt: 1, reason: 'timeout', message: 'job timed out after 3s' })
  })

  it('claims a job once, within the owner quota', async () => {
    const owner = `o-${randomUUID()}`
    const first = { ...newJob(), owner }
    expect(await records.claimMany([first], 1)).toMatchObject({
      rows: [{ row: { id: first.jobId, status: 'queued' }, created: true }],
    })
    expect(await records.claimMany([first], 1)).toMatchObject({
      rows: [{ row: { id: first.jobId }, created: false }],
    })
    expect(await records.claimMany([{ ...newJob(), owner }], 1)).toEqual({ overQuota: true })
  })

  it('claims a batch all or none: a conflict or the quota anywhere writes nothing, the first in order decides', async () => {
    const owner = `o-${randomUUID()}`
    const own = () => ({ ...newJob(), owner })
    const kept = { ...own(), gpu: { vramMb: 2000 } }
    expect(await records.claimMany([kept], 10)).toMatchObject({ rows: [{ created: true }] })
    const [a, b, c] = [own(), own(), own()]
    const stored = async () =>
      (
        await database.db
          .select({ id: jobs.id })
          .from(jobs)
          .where(inArray(jobs.id, [a.jobId, b.jobId, c.jobId]))
      ).length
    // A conflict in the middle (the same id, other options; another owner's job).
    expect(await records.claimMany([a, { ...kept, gpu: { vramMb: 4000 } }, b], 10)).toEqual({ conflict: 1 })
    const others = { ...newJob(), owner: `x-${owner}` }
    await records.ensureJob(others)
    expect(await records.claimMany([a, { ...others, owner }, b], 10)).toEqual({ conflict: 1 })
    expect(await records.claimMany([a, b, { ...kept, priority: 3 }], 10)).toEqual({ conflict: 2 })
    expect(await stored()).toBe(0)
    // The quota counts what is stored and every new job of the batch (a resubmit adds nothing).
    expect(await records.claimMany([a, kept, b, c], 3)).toEqual({ overQuota: true })
    // Quota before a later conflict, and a conflict before a later quota.
    expect(await records.claimMany([a, b, c, { ...kept, maxAttempts: 9 }], 3)).toEqual({ overQuota: true })
    expect(await records.claimMany([{ ...kept, maxAttempts: 9 }, a, b, c], 3)).toEqual({ conflict: 0 })
    expect(await stored()).toBe(0)
    const claimed = await records.claimMany([a, kept, b], 3)
    expect('rows' in claimed && claimed.rows.map((r) => [r.row.id, r.created])).toEqual([
      [a.jobId, true],
      [kept.jobId, false],
      [b.jobId, true],
    ])
    expect('rows' in claimed && claimed.rows[1]?.row.gpu).toEqual({ vramMb: 2000 })
  })

  it("reports the owner's NOT_QUEUED tombstones first, and claims over them once they are gone", async () => {
    const owner = `o-${randomUUID()}`
    const tombstone = { ...newJob(), owner }
    const fresh = { ...newJob(), owner }
    await records.claimMany([tombstone], 10)
    await records.cancel(tombstone.jobId, new NotQueuedError().toJobError(), 'not queued')
    expect(await records.claimMany([fresh, tombstone], 10)).toEqual({ notQueued: [tombstone.jobId] })
    expect(await database.db.select().from(jobs).where(eq(jobs.id, fresh.jobId))).toHaveLength(0)
    // Told to keep it: the tombstone is the stored row of the same request.
    expect(await records.claimMany([tombstone], 10, { undoNotQueued: false })).toMatchObject({
      rows: [{ row: { status: 'cancelled' }, created: false }],
    })
    await records.removeNotQueued(tombstone.jobId)
    expect(await records.claimMany([fresh, tombstone], 10)).toMatchObject({
      rows: [{ created: true }, { created: true, row: { status: 'queued' } }],
    })
  })

  it('takes back its inserts when a job raced in under the same id with another request', async () => {
    const owner = `o-${randomUUID()}`
    const a = { ...newJob(), owner }
    const raced = { ...newJob(), owner }
    // A row inserted between the claim's read and its insert (a host's row of a job another producer
    // added): inserted here by a trigger-free stand-in, the claim's own insert of it does nothing.
    const real = database.db
    let injected = false
    const racing = new JobRecords(
      new Proxy(real, {
        get(target, prop, receiver) {
          if (prop !== 'transaction') return Reflect.get(target, prop, receiver)
          return (fn: (tx: typeof real) => Promise<unknown>) =>
            target.transaction((tx) =>
              fn(
                new Proxy(tx, {
                  get(t, p, r) {
                    if (p !== 'insert' || injected) return Reflect.get(t, p, r)
                    injected = true
                    return (table: typeof jobs) => {
                      const insert = t.insert(table)
                      return {
                        values: (rows: unknown) => ({
                          onConflictDoNothing: () => ({
                            returning: () => ({
                              prepare: () => ({
                                execute: async () => {
                                  await t
                                    .insert(jobs)
                                    .values({ ...rowOf(raced), owner: null })
                                    .onConflictDoNothing()
                                  return insert
                                    .values(rows as never)
                                    .onConflictDoNothing()
                                    .returning()
                                },
                              }),
                            }),
                          }),
                        }),
                      }
                    }
                  },
                }) as typeof real,
              ),
            )
        },
      }) as typeof real,
    )
    expect(await racing.claimMany([a, raced], 10)).toEqual({ conflict: 1 })
    expect(
      await database.db
        .select()
        .from(jobs)
        .where(inArray(jobs.id, [a.jobId, raced.jobId])),
    ).toEqual([])
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
      const row = await records.retryNow(job.jobId, 0)
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

  it('of many retries at once one writes; one sent for an earlier attempt writes nothing', async () => {
    const job = newJob()
    await records.ensureJob(job)
    const later = new Date(Date.now() + 3_600_000)
    await database.db
      .update(jobs)
      .set({ status: 'retrying', attempt: 2, nextAttemptAt: later })
      .where(eq(jobs.id, job.jobId))
    expect(await records.retryNow(job.jobId, 1)).toBeNull()
    const rows = await Promise.all(Array.from({ length: 10 }, () => records.retryNow(job.jobId, 2)))
    expect(rows.filter((r) => r !== null)).toHaveLength(1)
    // Its wait over on its own: there is nothing to make due.
    await database.db
      .update(jobs)
      .set({ nextAttemptAt: new Date(Date.now() - 1000) })
      .where(eq(jobs.id, job.jobId))
    expect(await records.retryNow(job.jobId, 2)).toBeNull()
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
