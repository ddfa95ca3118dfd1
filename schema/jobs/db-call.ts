/** How the row writer's database calls meet an unreachable Postgres: as they are, or retried. */
import { setTimeout as sleep } from 'node:timers/promises'
import { backoffDelay } from '../backoff.ts'
import { isConnectionError } from '../clients.ts'

/** Runs one database call: `what` names it for a log line. */
export type DbCall = <T>(what: string, fn: () => Promise<T>) => Promise<T>

/**
 * Retries a call while Postgres is unreachable (down, restarting), waiting 200 ms doubling to 5 s, for at
 * most `maxWaitMs`; any other error, or one past the deadline, is thrown.
 */
export const retryWhileDown =
  (log: (msg: string) => void = () => {}, maxWaitMs = 120_000): DbCall =>
  async (what, fn) => {
    const deadline = Date.now() + maxWaitMs
    for (let failures = 1; ; failures++) {
      try {
        return await fn()
      } catch (err) {
        const delay = backoffDelay(failures, { baseMs: 200, maxMs: 5000 })
        if (!isConnectionError(err) || Date.now() + delay > deadline) throw err
        log(`postgres unavailable (${what}): retrying in ${delay} ms`)
        await sleep(delay)
      }
    }
  }
