import { expect } from 'vitest'
import { attemptsOf, getJob, type Stack, waitFor } from '../helpers/stack.ts'

/**
 * Waits until job `jobId` runs with progress above `minProgress`, then returns the pid (= process group
 * id) of its first attempt's job process, which must be known by then.
 */
export async function runningJobPid(stack: Stack, jobId: string, minProgress: number, what: string) {
  await waitFor(
    async () => {
      const b = await getJob(stack, jobId).catch(() => null)
      return b?.status === 'running' && b.progress > minProgress
    },
    20_000,
    what,
  )
  const [attempt] = await attemptsOf(stack.database, jobId)
  const pid = attempt?.pid ?? 0
  expect(pid).toBeGreaterThan(0)
  return pid
}
