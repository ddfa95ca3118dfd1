import { randomUUID } from 'node:crypto'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { eq, sql } from 'drizzle-orm'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { JobStore } from '../../gateway/store.ts'
import { JobState } from '../../gpu-host/state.ts'
import { type Database, openDatabase } from '../../schema/db/connect.ts'
import { jobs } from '../../schema/db/tables.ts'
import { attemptsOf, TEST_DATABASE_URL } from '../helpers/stack.ts'

/** One suite for the state layer, run against every driver: postgres.js and the embedded PGlite. */
function stateSuite(
  driver: string,
  open: () => Promise<{ database: Database; cleanup: () => Promise<void> }>,
) {
  describe(`job state on ${driver}`, () => {
    let database: Database
    let cleanup: () => Promise<void>
    let store: JobStore
    let hostA: JobState
    let hostB: JobState
    beforeAll(async () => {
      ;({ database, cleanup } = await open())
      store = new JobStore(database.db)
      hostA = new JobState(database.db, 'host-a')
      hostB = new JobState(database.db, 'host-b')
    }, 120_000)
    afterAll(async () => {
      await database?.close()
      await cleanup?.()
    })

    const newJob = (owner: string | null = null) => ({
      jobId: `st-${randomUUID()}`,
      type: 'train_lora' as const,
      params: { baseModel: 'sd15', datasetPath: 'ds' },
      owner,
      priority: undefined,
      timeoutSec: undefined,
      maxAttempts: 3,
      outputPrefix: 'loras/x',
    })
    const event = (jobId: string, seq: number, status: 'running' | 'completed' = 'running') => ({
      jobId,
      type: 'train_lora' as const,
      status,
      progress: status === 'completed' ? 100 : 50,
      message: status,
      timestamp: new Date().toISOString(),
      seq,
      attempt: 1,
    })

    /** Every id of `owner`'s jobs, page by page (2 a page), as the cursors lead. */
    const pageAll = async (owner: string): Promise<string[]> => {
      const seen: string[] = []
      let cursor: string | undefined
      for (;;) {
        const page = await store.list({ owner, limit: 2, cursor })
        if ('badCursor' in page) throw new Error('bad cursor')
        seen.push(...page.rows.map((r) => r.id))
        if (!page.nextCursor) return seen
        cursor = page.nextCursor
      }
    }

    it('inserts a job once: the same id again is refused', async () => {
      const job = newJob()
      expect(await store.insert(job)).toMatchObject({ id: job.jobId, status: 'queued', attempt: 0 })
      expect(await store.insert(job)).toBeNull()
    })

    it('counts attempts, guards writes by attempt, and writes the terminal state exactly once', async () => {
      const job = newJob()
      await store.insert(job)
      const first = await hostA.startAttempt(job.jobId)
      expect(first).toMatchObject({ status: 'running', attempt: 1, host: 'host-a' })
      // Host A is presumed dead; host B takes the job as attempt 2.
      const second = await hostB.startAttempt(job.jobId)
      expect(second?.attempt).toBe(2)
      // The stale attempt can no longer write progress or an end.
      await hostA.progress(job.jobId, 1, event(job.jobId, 5))
      expect((await store.get(job.jobId))?.progress).toBe(0)
      expect(
        await hostA.finishAttempt(job.jobId, 1, { status: 'failed', progress: 10, message: 'late' }),
      ).toBe(false)
      await hostB.progress(job.jobId, 2, event(job.jobId, 6))
      expect((await store.get(job.jobId))?.progress).toBe(50)
      const artifacts = [
        {
          path: 'a.bin',
          key: 'loras/x/a.bin',
          size: 3,
          sha256: 'ab',
          contentType: 'application/octet-stream',
        },
      ]
      expect(
        await hostB.finishAttempt(job.jobId, 2, {
          status: 'completed',
          progress: 100,
          message: 'done',
          result: { ok: true },
          artifacts,
        }),
      ).toBe(true)
      expect(
        await hostB.finishAttempt(job.jobId, 2, { status: 'failed', progress: 100, message: 'again' }),
      ).toBe(false)
      await hostB.recordEvent(event(job.jobId, 7, 'completed'))
      const row = await store.get(job.jobId)
      expect(row).toMatchObject({ status: 'completed', result: { ok: true }, lastSeq: 7 })
      expect(row?.finishedAt).not.toBeNull()
      expect((await store.artifacts(job.jobId)).map((a) => a.path)).toEqual(['a.bin'])
      const attempts = await attemptsOf(database, job.jobId)
      expect(attempts.map((a) => [a.attempt, a.host, a.outcome])).toEqual([
        [1, 'host-a', 'interrupted'],
        [2, 'host-b', 'completed'],
      ])
      // A finished job cannot be started or cancelled again.
      expect(await hostA.startAttempt(job.jobId)).toBeNull()
      expect(await store.cancel(job.jobId, { code: 'C', reason: 'cancelled', message: 'x' }, 'x')).toBe(false)
    })

    it('pages a list newest first with a cursor, filtered by owner, status and type', async () => {
      const owner = `owner-${randomUUID()}`
      const ids: string[] = []
      for (let i = 0; i < 5; i++) {
        const job = newJob(owner)
        await store.insert(job)
        ids.push(job.jobId)
        await sleep(5)
      }
      const seen = await pageAll(owner)
      expect(seen).toEqual([...ids].reverse())
      const none = await store.list({ owner, status: 'completed', limit: 10 })
      expect('rows' in none && none.rows).toEqual([])
      expect(await store.list({ owner, limit: 2, cursor: 'garbage' })).toEqual({ badCursor: true })
      const sqlInCursor = Buffer.from(JSON.stringify(["x'; drop table jobs; --", 'id'])).toString('base64url')
      expect(await store.list({ owner, limit: 2, cursor: sqlInCursor })).toEqual({ badCursor: true })
    })

    it('pages rows created within one millisecond (a batch) without losing or repeating one', async () => {
      const owner = `owner-${randomUUID()}`
      const ids: string[] = []
      for (let i = 0; i < 7; i++) {
        const job = newJob(owner)
        await store.insert(job)
        ids.push(job.jobId)
      }
      // The same millisecond, microseconds apart (Date, and so a cursor made of one, keeps milliseconds).
      for (const [i, id] of ids.entries())
        await database.db
          .update(jobs)
          .set({
            createdAt: sql`timestamptz '2026-12-03 08:00:00.123000+00' + ${i} * interval '1 microsecond'`,
          })
          .where(eq(jobs.id, id))
      const seen = await pageAll(owner)
      expect(seen).toEqual([...ids].reverse())
    })
  })
}

stateSuite('Postgres (postgres.js)', async () => ({
  database: await openDatabase({ url: TEST_DATABASE_URL, poolSize: 3 }),
  cleanup: async () => {},
}))

stateSuite('PGlite (embedded)', async () => {
  const dir = await mkdtemp(path.join(tmpdir(), 'pglite-'))
  return {
    database: await openDatabase({ pgliteDir: dir }),
    cleanup: () => rm(dir, { recursive: true, force: true }),
  }
})
