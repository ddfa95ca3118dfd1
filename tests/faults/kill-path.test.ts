import { randomUUID } from 'node:crypto'
import { setTimeout as sleep } from 'node:timers/promises'
import { ListObjectsV2Command } from '@aws-sdk/client-s3'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { CANCEL_SWEEP_MS } from '../../gpu-host/cancel-listener.ts'
import { cancelKey } from '../../schema/keys.ts'
import {
  addFixtureJob,
  FIXTURE_DISPATCH,
  groupGone,
  processGone,
  type Stack,
  startStack,
  waitFor,
} from '../helpers/stack.ts'
import { runningJobPid } from './running-job.ts'

let stack: Stack
beforeAll(async () => {
  stack = await startStack({
    handlerModules: { train_lora: FIXTURE_DISPATCH },
    env: { KILL_GRACE_SEC: '1', RETRY_BACKOFF_MS: '200', GPU_SLOTS: '2' },
  })
})
afterAll(async () => {
  await stack?.close()
})

/** Fixture params are not train_lora's, so these jobs come in as from any BullMQ producer. */
const submit = (mode: string, extra: Record<string, unknown> = {}, params: Record<string, unknown> = {}) =>
  addFixtureJob(stack, mode, extra, params)

/** A foreign producer's job whose handler writes one artifact at `path`; `envelope` adds to its envelope. */
const addWriter = (jobId: string, path: string, envelope: Record<string, unknown> = {}) =>
  stack.queue.add(
    'train_lora',
    { jobId, type: 'train_lora', params: { mode: 'writes-artifacts', artifacts: [{ path }] }, ...envelope },
    { jobId },
  )

/** The process group of every attempt is gone: no child, no grandchild (read from /proc). */
async function expectNoProcessLeft(jobId: string): Promise<void> {
  const attempts = await stack.attempts(jobId)
  expect(attempts.length).toBeGreaterThan(0)
  for (const a of attempts) {
    expect(a.pid).toBeGreaterThan(0)
    expect(await groupGone(a.pid ?? 0)).toBe(true)
  }
}

describe('hard timeout', () => {
  it.each([
    ['hangs', 'a handler that blocks its event loop'],
    ['ignores-sigterm', 'a handler that ignores SIGTERM'],
    ['allocates-memory', 'a handler that allocates memory until killed'],
  ])('%s: %s is killed at the deadline, reason timeout', async (mode) => {
    const started = Date.now()
    const jobId = await submit(mode, { timeoutSec: 1, maxAttempts: 1 })
    const body = await stack.waitStatus(jobId, ['failed', 'completed'], 20_000)
    expect(body.status).toBe('failed')
    expect(body.error).toMatchObject({ reason: 'timeout' })
    const elapsed = Date.now() - started
    expect(elapsed).toBeGreaterThanOrEqual(1000)
    // Deadline + grace + confirmation, with room for a loaded machine.
    expect(elapsed).toBeLessThan(8000)
    await expectNoProcessLeft(jobId)
    const [attempt] = await stack.attempts(jobId)
    expect(attempt).toMatchObject({ outcome: 'failed', reason: 'timeout', host: stack.config.hostId })
  })

  it('kills grandchildren that ignore SIGTERM too', async () => {
    const jobId = await submit('spawns-grandchildren', { timeoutSec: 2, maxAttempts: 1 })
    const running = await stack.waitJob(
      jobId,
      (b) => b.message.startsWith('grandchildren'),
      15_000,
      'grandchildren to start',
    )
    const pids = running.message.replace('grandchildren ', '').split(',').map(Number)
    expect(pids).toHaveLength(2)
    for (const pid of pids) expect(await processGone(pid)).toBe(false)
    const body = await stack.waitStatus(jobId, ['failed'], 20_000)
    expect(body.error).toMatchObject({ reason: 'timeout' })
    for (const pid of pids) expect(await processGone(pid)).toBe(true)
    await expectNoProcessLeft(jobId)
  })

  it('a per-job timeoutSec overrides the handler default (600 s)', async () => {
    const jobId = await submit('ok', { timeoutSec: 1, maxAttempts: 1 }, { steps: 100, stepMs: 100 })
    const body = await stack.waitStatus(jobId, ['failed', 'completed'], 20_000)
    expect(body.error).toMatchObject({ reason: 'timeout' })
  })
})

describe('retries', () => {
  it('retries a throwing handler with backoff, shows retrying and the next attempt time, records every attempt', async () => {
    const jobId = await submit('throws', { maxAttempts: 3 })
    const retrying = await stack.waitStatus(jobId, ['retrying'], 15_000)
    expect(retrying.nextAttemptAt).not.toBeNull()
    expect(Date.parse(retrying.nextAttemptAt ?? '')).toBeGreaterThan(Date.parse(retrying.updatedAt) - 1)
    const body = await stack.waitStatus(jobId, ['failed'], 20_000)
    expect(body.attempt).toBe(3)
    expect(body.error).toMatchObject({ reason: 'handler_error' })
    expect(body.error?.message).toContain('boom on attempt 3')
    const attempts = await stack.attempts(jobId)
    expect(attempts.map((a) => [a.attempt, a.outcome, a.reason])).toEqual([
      [1, 'retrying', 'handler_error'],
      [2, 'retrying', 'handler_error'],
      [3, 'failed', 'handler_error'],
    ])
    for (const a of attempts) {
      expect(a.host).toBe(stack.config.hostId)
      expect(a.finishedAt?.getTime()).toBeGreaterThanOrEqual(a.startedAt.getTime())
    }
    // Backoff: the attempts are spaced, not back to back.
    const gap = (attempts[1]?.startedAt.getTime() ?? 0) - (attempts[0]?.finishedAt?.getTime() ?? 0)
    expect(gap).toBeGreaterThanOrEqual(90)
    await expectNoProcessLeft(jobId)
  })

  it('a retried job that succeeds keeps only the final attempt files and one manifest', async () => {
    const jobId = await submit('throws', { maxAttempts: 3 }, { succeedOnAttempt: 2, steps: 2, stepMs: 5 })
    const body = await stack.waitStatus(jobId, ['completed', 'failed'], 20_000)
    expect(body).toMatchObject({ status: 'completed', attempt: 2 })
    const prefix = `loras/${jobId}`
    expect(await stack.keysUnder(prefix)).toEqual([
      `${prefix}/attempt-2.txt`,
      `${prefix}/manifest.json`,
      `${prefix}/out.txt`,
    ])
    expect(body.artifacts.map((a) => a.path).sort()).toEqual(['attempt-2.txt', 'out.txt'])
  })

  it('a job that fails for good leaves no partial artifacts', async () => {
    const jobId = await submit('throws', { maxAttempts: 2 })
    const body = await stack.waitStatus(jobId, ['failed'], 15_000)
    expect(body.attempt).toBe(2)
    // Both attempts wrote attempt-<n>.txt before throwing.
    expect(await stack.keysUnder(`loras/${jobId}`)).toEqual([])
  })

  it('fails at once on a non-retryable error', async () => {
    const jobId = await submit('throws-non-retryable', { maxAttempts: 3 })
    const body = await stack.waitStatus(jobId, ['failed'], 15_000)
    expect(body.attempt).toBe(1)
    expect(body.error).toMatchObject({ reason: 'invalid_dataset', message: 'the dataset is unusable' })
  })

  it('treats an exit with a non-zero code as a crash', async () => {
    const jobId = await submit('exits-nonzero', { maxAttempts: 1 })
    const body = await stack.waitStatus(jobId, ['failed'], 15_000)
    expect(body.error).toMatchObject({ reason: 'crash' })
    expect(body.error?.message).toContain('exited with code 3')
    await expectNoProcessLeft(jobId)
  })

  it('retries a process killed by a signal, then fails with reason crash', async () => {
    const jobId = await submit('crashes-by-signal', { maxAttempts: 2 })
    const body = await stack.waitStatus(jobId, ['failed'], 15_000)
    expect(body.attempt).toBe(2)
    expect(body.error?.message).toContain('SIGKILL')
    expect(body.error).toMatchObject({ reason: 'crash' })
  })

  it('survives a progress flood: completes, progress ends at 100, the gateway keeps answering', async () => {
    const jobId = await submit('floods-progress', { maxAttempts: 1 })
    const health = await fetch(stack.url('/healthz'))
    expect(health.status).toBe(200)
    const body = await stack.waitStatus(jobId, ['completed', 'failed'], 60_000)
    expect(body).toMatchObject({ status: 'completed', progress: 100 })
  })
})

describe('cancellation', () => {
  it('kills a running job (SIGTERM, grace, SIGKILL of the group) and never retries it', async () => {
    const jobId = await submit('ignores-sigterm', { maxAttempts: 3 })
    await stack.waitStatus(jobId, ['running'], 15_000)
    await stack.waitJob(jobId, (b) => b.message === 'ignoring SIGTERM', 15_000, 'handler to run')
    const asked = Date.now()
    const res = await fetch(stack.url(`/api/jobs/${jobId}/cancel`), { method: 'POST' })
    expect(res.status).toBe(202)
    const body = await stack.waitStatus(jobId, ['cancelled', 'failed', 'completed'], 15_000)
    expect(body.status).toBe('cancelled')
    // Within 2 s plus the grace period (1 s here).
    expect(Date.now() - asked).toBeLessThan(3000 + 1000)
    await expectNoProcessLeft(jobId)
    await sleep(500)
    const after = await stack.job(jobId)
    expect(after).toMatchObject({ status: 'cancelled', attempt: 1 })
    expect(await stack.queue.getJob(jobId).then((j) => j?.attemptsMade ?? 0)).toBeLessThanOrEqual(1)
  })

  it('a cancelled running job leaves no partial artifacts (no manifest covers them)', async () => {
    const jobId = await submit(
      'writes-artifacts',
      { maxAttempts: 3 },
      {
        artifacts: [{ path: 'partial.bin', body: 'half a checkpoint' }],
        holdMs: 30_000,
      },
    )
    const prefix = `loras/${jobId}`
    await waitFor(async () => (await stack.keysUnder(prefix)).length > 0, 15_000, 'the partial file')
    expect((await fetch(stack.url(`/api/jobs/${jobId}/cancel`), { method: 'POST' })).status).toBe(202)
    // The files go before the final state is stored, so they are gone when the job shows cancelled.
    const body = await stack.waitStatus(jobId, ['cancelled', 'failed', 'completed'], 15_000)
    expect(body.status).toBe('cancelled')
    expect(await stack.keysUnder(prefix)).toEqual([])
  })

  it('a cancel whose broadcast the host never heard (its key alone, as when a subscriber reconnects) still kills the job', async () => {
    const jobId = await submit('ok', { maxAttempts: 3 }, { steps: 300, stepMs: 100 })
    const pid = await runningJobPid(stack, jobId, 1, 'the job to run')
    // What the cancel route writes before it broadcasts; the broadcast is lost (pub/sub is at most once).
    const asked = Date.now()
    await stack.redis.set(cancelKey(jobId), '1', 'EX', 60)
    const body = await stack.waitStatus(jobId, ['cancelled', 'failed', 'completed'], 15_000)
    expect(body).toMatchObject({ status: 'cancelled', attempt: 1 })
    // Within a sweep (2 s) and the grace (1 s), with room for a loaded machine.
    expect(Date.now() - asked).toBeLessThan(CANCEL_SWEEP_MS + 1000 + 2000)
    expect(await groupGone(pid)).toBe(true)
  })

  it('answers 409 for a finished job and 404 for an unknown one', async () => {
    const jobId = await submit('ok', {}, { steps: 1, stepMs: 1 })
    await stack.waitStatus(jobId, ['completed'], 15_000)
    const res = await fetch(stack.url(`/api/jobs/${jobId}/cancel`), { method: 'POST' })
    expect(res.status).toBe(409)
    expect(((await res.json()) as { error: { code: string } }).error.code).toBe('conflict')
    expect((await fetch(stack.url('/api/jobs/no-such-job/cancel'), { method: 'POST' })).status).toBe(404)
  })
})

describe('artifact keys stay under <prefix>/<jobId>/', () => {
  const bucketKeys = async () =>
    (
      (await stack.s3.client.send(new ListObjectsV2Command({ Bucket: stack.config.s3.bucket }))).Contents ??
      []
    ).map((o) => o.Key ?? '')

  it.each([
    ['the type root', (_id: string) => 'loras'],
    ["another job's folder", (_id: string) => 'loras/someone-else'],
    ['another type', (id: string) => `voices/${id}`],
    ['an escape', (id: string) => `loras/${id}/../..`],
  ])(
    'an envelope outputPrefix of %s fails the job (invalid_params), nothing is written',
    async (_label, prefixOf) => {
      const jobId = `fx-prefix-${randomUUID().slice(0, 8)}`
      const before = await bucketKeys()
      await addWriter(jobId, 'x.txt', { artifacts: { outputPrefix: prefixOf(jobId) } })
      const body = await stack.waitStatus(jobId, ['failed', 'completed'], 15_000)
      expect(body.error).toMatchObject({ reason: 'invalid_params' })
      expect(body.error?.message).toContain('artifacts.outputPrefix')
      expect(await bucketKeys()).toEqual(before)
    },
  )

  it.each(['.', '..'])(
    'a jobId %j from a foreign producer writes nothing beside other jobs or at the root',
    async (jobId) => {
      const before = await bucketKeys()
      await addWriter(jobId, 'manifest2.json')
      await waitFor(
        async () => (await stack.queue.getJobState(jobId)) === 'failed',
        15_000,
        'the job to be refused',
      )
      expect(await bucketKeys()).toEqual(before)
      await stack.queue.remove(jobId)
    },
  )
})
