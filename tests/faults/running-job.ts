import { expect } from 'vitest'
import type { Stack } from '../helpers/stack.ts'

/**
 * Waits until job `jobId` runs with progress above `minProgress`, then returns the pid (= process group
 * id) of its first attempt's job process, which must be known by then.
 */
export async function runningJobPid(stack: Stack, jobId: string, minProgress: number, what: string) {
  await stack.waitJob(jobId, (b) => b.status === 'running' && b.progress > minProgress, 20_000, what)
  const [attempt] = await stack.attempts(jobId)
  const pid = attempt?.pid ?? 0
  expect(pid).toBeGreaterThan(0)
  return pid
}
