import { eq } from 'drizzle-orm'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import { jobEvents } from '../../schema/db/tables.ts'
import { type HostProcess, startHostProcess } from '../helpers/host-process.ts'
import { addFixtureJob, groupGone, type Stack, startStack, TERMINAL, waitFor } from '../helpers/stack.ts'
import { runningJobPid } from './running-job.ts'

let stack: Stack
const hosts: HostProcess[] = []
beforeAll(async () => {
  // The gateway only: GPU hosts run as separate processes below.
  stack = await startStack({ withHost: false })
})
afterEach(() => {
  for (const h of hosts.splice(0)) if (h.proc.exitCode === null) h.proc.kill('SIGKILL')
})
afterAll(async () => {
  await stack?.close()
})

const host = async (name: string, env: Record<string, string> = {}) => {
  const h = await startHostProcess(stack, name, env)
  hosts.push(h)
  return h
}

describe('a GPU host killed with kill -9', () => {
  it('takes its job process group down with it; the job completes on a second host as attempt 2, once', async () => {
    const a = await host('a')
    const jobId = await addFixtureJob(stack, 'ok', { maxAttempts: 3 }, { steps: 40, stepMs: 100 })
    const pgid = await runningJobPid(stack, jobId, 5, 'job to run on host a')
    expect(await groupGone(pgid)).toBe(false)

    const killedAt = Date.now()
    a.proc.kill('SIGKILL')
    await a.exited
    // The child sees its IPC channel close and kills its own group: no orphan keeps a GPU.
    await waitFor(() => groupGone(pgid), 5000, 'orphaned job process to die')
    const orphanGoneMs = Date.now() - killedAt

    const b = await host('b')
    const body = await stack.waitStatus(jobId, ['completed', 'failed'], 60_000)
    const recoveredMs = Date.now() - killedAt
    expect(body).toMatchObject({ status: 'completed', attempt: 2 })
    const attempts = await stack.attempts(jobId)
    expect(attempts.map((x) => [x.attempt, x.outcome, x.host])).toEqual([
      [1, 'interrupted', `${stack.prefix}-a`],
      [2, 'completed', `${stack.prefix}-b`],
    ])
    // Stalled detection bound: lock 10 s + stalled check every 5 s, plus the job's own 4 s.
    expect(recoveredMs).toBeLessThan(35_000)
    const terminal = (
      await stack.database.db.select().from(jobEvents).where(eq(jobEvents.jobId, jobId))
    ).filter((e) => TERMINAL.includes(e.status))
    expect(terminal).toHaveLength(1)
    const prefix = `loras/${jobId}`
    expect(await stack.keysUnder(prefix)).toEqual([
      `${prefix}/attempt-2.txt`,
      `${prefix}/manifest.json`,
      `${prefix}/out.txt`,
    ])
    console.info(
      `host crash: orphan group gone after ${orphanGoneMs} ms, job recovered and completed ${recoveredMs} ms after the kill`,
    )
    b.proc.kill('SIGTERM')
    expect((await b.exited).code).toBe(0)
  })
})

describe('SIGTERM to a GPU host', () => {
  it('lets a short job finish, requeues a long one at once, and exits 0', async () => {
    const a = await host('drain', { SHUTDOWN_GRACE_SEC: '4', GPU_SLOTS: '2' })
    const short = await addFixtureJob(stack, 'ok', { maxAttempts: 3 }, { steps: 10, stepMs: 100 })
    const long = await addFixtureJob(stack, 'ok', { maxAttempts: 3 }, { steps: 100, stepMs: 100 })
    await stack.waitStatus(short, ['running'], 20_000)
    await stack.waitStatus(long, ['running'], 20_000)
    // `running` is written before the job process has booted (seconds under tsx on a loaded machine):
    // wait for the short job's first step, so what is left of it (under 1 s) is well inside the grace.
    await stack.waitJob(short, (b) => b.progress > 0, 20_000, 'the short job to step')
    const longAttempt = await waitFor(
      async () => (await stack.attempts(long)).find((x) => x.pid),
      10_000,
      'pid',
    )

    const asked = Date.now()
    a.proc.kill('SIGTERM')
    const exit = await a.exited
    expect(exit.code, a.output()).toBe(0)
    // Grace (2 s) + kill grace (1 s) + margin.
    expect(Date.now() - asked).toBeLessThan(8000)
    expect(await groupGone(longAttempt?.pid ?? 0)).toBe(true)

    expect(await stack.job(short)).toMatchObject({ status: 'completed', attempt: 1 })
    // Back in the queue at once, not after a stalled check.
    expect(await stack.job(long)).toMatchObject({ status: 'queued' })
    expect(await stack.queue.getJobState(long)).toBe('waiting')

    await host('after-drain')
    const body = await stack.waitStatus(long, ['completed', 'failed'], 30_000)
    expect(body).toMatchObject({ status: 'completed', attempt: 2 })
  })
})
