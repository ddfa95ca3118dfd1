import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import {
  addFixtureJob,
  FIXTURE_DISPATCH,
  isolatedDatabase,
  type Stack,
  startStack,
  waitFor,
} from '../helpers/stack.ts'

describe('cancelling a job that is not running', () => {
  let idle: Stack
  let slow: Stack
  let slowDb: Awaited<ReturnType<typeof isolatedDatabase>> | undefined
  beforeAll(async () => {
    // The slow stack's host runs the reconciler (it sweeps ended jobs' partial files), on a database of its own.
    slowDb = await isolatedDatabase()
    // No GPU host: submitted jobs stay queued.
    idle = await startStack({ withHost: false })
    // A long backoff keeps a failed job in `retrying` long enough to cancel it.
    slow = await startStack({
      handlerModules: { train_lora: FIXTURE_DISPATCH },
      env: { RETRY_BACKOFF_MS: '60000' },
      databaseUrl: slowDb.url,
      reconciler: { intervalMs: 200, graceMs: 200 },
    })
  })
  afterAll(async () => {
    await idle?.close()
    await slow?.close()
    await slowDb?.drop()
  })

  it('removes a queued job from the queue and marks it cancelled', async () => {
    const { json } = await idle.post({
      type: 'train_lora',
      params: { baseModel: 'sd15', datasetPath: 'ds' },
    })
    const jobId = json.jobId as string
    expect(await idle.queue.getJob(jobId)).toBeDefined()
    const res = await fetch(idle.url(`/api/jobs/${jobId}/cancel`), { method: 'POST' })
    expect(res.status).toBe(202)
    expect(await res.json()).toMatchObject({ jobId, status: 'cancelled' })
    expect(await idle.queue.getJob(jobId)).toBeUndefined()
    const body = await idle.job(jobId)
    expect(body).toMatchObject({ status: 'cancelled', error: { reason: 'cancelled' } })
    expect(body.finishedAt).not.toBeNull()
    // A second cancel is a conflict.
    expect((await fetch(idle.url(`/api/jobs/${jobId}/cancel`), { method: 'POST' })).status).toBe(409)
  })

  it('removes a retrying job from the delayed set and it never runs again; its partial files go', async () => {
    const jobId = await addFixtureJob(slow, 'throws', { maxAttempts: 3 })
    const retrying = await slow.waitStatus(jobId, ['retrying'], 15_000)
    expect(retrying.attempt).toBe(1)
    // The row says retrying a moment before BullMQ has moved the job to its delayed set.
    await waitFor(
      async () => (await slow.queue.getJobState(jobId)) === 'delayed',
      5000,
      'the job to be delayed',
    )
    const res = await fetch(slow.url(`/api/jobs/${jobId}/cancel`), { method: 'POST' })
    expect(res.status).toBe(202)
    const body = await slow.job(jobId)
    expect(body).toMatchObject({ status: 'cancelled', attempt: 1 })
    expect(body.nextAttemptAt).toBeNull()
    expect(await slow.queue.getJob(jobId)).toBeUndefined()
    // Attempt 1 left a file and no host runs the job any more: the reconciler's sweep removes it.
    expect(await slow.keysUnder(`loras/${jobId}`)).toEqual([`loras/${jobId}/attempt-1.txt`])
    await waitFor(
      async () => (await slow.keysUnder(`loras/${jobId}`)).length === 0,
      15_000,
      'the partial files of the cancelled job to be removed',
    )
  })
})
