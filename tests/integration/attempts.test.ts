/**
 * Attempts in the status body, retry now and re-run, with a real GPU host: fixture jobs whose first
 * attempt fails, and a real simulated job run again.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { JobStatusBody } from '../../schema/api.ts'
import { addFixtureJob, FIXTURE_DISPATCH, type Stack, startHost, startStack } from '../helpers/stack.ts'

let stack: Stack
beforeAll(async () => {
  // A backoff far longer than any test: a retrying job starts before it only when asked to.
  stack = await startStack({
    handlerModules: { train_lora: FIXTURE_DISPATCH },
    env: { RETRY_BACKOFF_MS: '600000' },
  })
})
afterAll(async () => {
  await stack?.close()
})

const post = (p: string) => fetch(stack.url(p), { method: 'POST' })

describe('attempts, retry and re-run with a GPU host', () => {
  it('shows a failed first attempt with its reason; retry starts the second before its backoff', async () => {
    const jobId = await addFixtureJob(stack, 'throws', { maxAttempts: 2 }, { succeedOnAttempt: 2 })
    const retrying = await stack.waitStatus(jobId, ['retrying'])
    expect(retrying.attempts).toEqual([
      {
        attempt: 1,
        hostId: stack.config.hostId,
        pid: expect.any(Number),
        startedAt: expect.any(String),
        finishedAt: expect.any(String),
        outcome: 'failed',
        reason: 'handler_error',
        message: expect.stringContaining('boom on attempt 1'),
      },
    ])
    // Ten minutes away without the retry.
    expect(Date.parse(retrying.nextAttemptAt ?? '') - Date.now()).toBeGreaterThan(60_000)
    // Twenty at once (a double click, several operators): one starts the attempt, the rest are told it is due.
    const answers = await Promise.all(Array.from({ length: 20 }, () => post(`/api/jobs/${jobId}/retry`)))
    const started = answers.filter((r) => r.status === 202)
    expect(answers.map((r) => r.status).sort()).toEqual([202, ...Array(19).fill(409)])
    expect(await started[0]?.json()).toMatchObject({ jobId })
    const refused = (await answers.find((r) => r.status === 409)?.json()) as { error: { message: string } }
    expect(refused.error.message).toMatch(/attempt 2 is due already|is running, not retrying/)
    const done = await stack.waitStatus(jobId, ['completed'], 20_000)
    expect(done.attempts.map((a) => [a.attempt, a.outcome, a.reason])).toEqual([
      [1, 'failed', 'handler_error'],
      [2, 'completed', null],
    ])
    expect(done.attempts[1]?.finishedAt).not.toBeNull()
    // Finished: no attempt to start now.
    const again = await post(`/api/jobs/${jobId}/retry`)
    expect(again.status).toBe(409)
    expect(await again.json()).toMatchObject({ error: { message: expect.stringContaining('completed') } })
  })

  it('re-runs a finished job as a new job that completes with the same params', async () => {
    const first = await stack.post({
      type: 'train_voice',
      params: { speakerName: 'ann', datasetPath: 'ds', epochs: 1 },
      maxAttempts: 2,
      timeoutSec: 300,
      gpu: { vramMb: 0, exclusive: false },
    })
    expect(first.status).toBe(202)
    const jobId = String(first.json.jobId)
    const original = await stack.waitStatus(jobId, ['completed'])
    const res = await post(`/api/jobs/${jobId}/rerun`)
    expect(res.status).toBe(202)
    const { jobId: newId, status } = (await res.json()) as { jobId: string; status: string }
    expect(newId).not.toBe(jobId)
    expect(status).toBe('queued')
    const copy: JobStatusBody = await stack.waitStatus(newId, ['completed'])
    expect(copy).toMatchObject({ type: 'train_voice', params: original.params, maxAttempts: 2 })
    // The options are kept: the job's own GPU needs too.
    expect(copy).toMatchObject({ timeoutSec: 300, gpu: { vramMb: 0, exclusive: false } })
    expect(original.gpu).toEqual({ vramMb: 0, exclusive: false })
    expect(copy.attempts).toHaveLength(1)
    expect(copy.artifacts.map((a) => a.path)).toEqual(original.artifacts.map((a) => a.path))
    expect((await post('/api/jobs/no-such-job/rerun')).status).toBe(404)
  })
})

describe('attempts a host shutdown interrupted', () => {
  let bare: Stack
  beforeAll(async () => {
    bare = await startStack({ withHost: false })
  })
  afterAll(async () => {
    await bare?.close()
  })

  it('are not counted: a job of maxAttempts 1 stopped by two shutdowns still runs to its end', async () => {
    const jobId = await addFixtureJob(bare, 'ok', { maxAttempts: 1 }, { steps: 30, stepMs: 100 })
    for (const attempt of [1, 2]) {
      const host = await startHost(bare, {
        handlerModules: { train_lora: FIXTURE_DISPATCH },
        env: { SHUTDOWN_GRACE_SEC: '0' },
      })
      await bare.waitJob(
        jobId,
        (j) => j.attempt === attempt && j.progress > 0,
        20_000,
        `attempt ${attempt} to step`,
      )
      await host.close()
      expect(await bare.job(jobId)).toMatchObject({ status: 'queued', attempt })
    }
    const last = await startHost(bare, { handlerModules: { train_lora: FIXTURE_DISPATCH } })
    try {
      const done = await bare.waitStatus(jobId, ['completed', 'failed'], 30_000)
      expect(done).toMatchObject({ status: 'completed', attempt: 3 })
      expect(done.attempts.map((a) => [a.attempt, a.outcome, a.reason])).toEqual([
        [1, 'interrupted', 'shutdown'],
        [2, 'interrupted', 'shutdown'],
        [3, 'completed', null],
      ])
    } finally {
      await last.close()
    }
  })
})
