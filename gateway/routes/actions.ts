/**
 * What a client does to a job besides cancelling it: run it again as a new job (`POST
 * /api/jobs/:jobId/rerun`, through the submit path of submit.ts) and start a retrying job's next attempt
 * now (`POST /api/jobs/:jobId/retry`).
 */
import { setTimeout as sleep } from 'node:timers/promises'
import { Hono } from 'hono'
import type { RetryJobResponse, SubmitJobResponse } from '../../schema/api.ts'
import { isTerminal } from '../../schema/common.ts'
import type { JobRow } from '../../schema/db/tables.ts'
import { ApiError, onBackend } from '../errors.ts'
import type { JobAccess } from './access.ts'
import type { JobsDeps } from './jobs.ts'
import { checkBody } from './submit.ts'

/** How long a retry waits for a host that wrote the row `retrying` to move its BullMQ job to delayed. */
const SETTLE_MS = 2000
const SETTLE_POLL_MS = 50

/** The submit body that runs `row` again: its type, params as stored, and options; a new id. */
const rerunBody = (row: JobRow) => ({
  type: row.type,
  params: row.params,
  maxAttempts: row.maxAttempts,
  ...(row.priority === null ? {} : { priority: row.priority }),
  ...(row.timeoutSec === null ? {} : { timeoutSec: row.timeoutSec }),
  ...(row.gpu === null ? {} : { gpu: row.gpu }),
})

/** @example app.route('/', actionRoutes({ ...deps, access, submitter, onChanged: bodies.forget })) */
export function actionRoutes(deps: JobsDeps & { access: JobAccess }): Hono {
  const { store, queue, access, logger, submitter, config } = deps
  const app = new Hono()

  app.post('/api/jobs/:jobId/rerun', async (c) => {
    const row = await access.visibleJob(c.req.param('jobId'), c.get('owner'))
    // The stored job passes the submit's checks again (DATA_DIR or the engines may have changed since).
    const checked = await checkBody(rerunBody(row), config).catch((err: unknown) => {
      if (!(err instanceof ApiError) || (err.status !== 400 && err.status !== 413)) throw err
      throw new ApiError(409, 'conflict', `job "${row.id}" cannot be run again: ${err.message}`, err.issues)
    })
    const { status, body } = await submitter.submitOne(checked, c.get('owner'))
    logger.info({ jobId: body.jobId, rerunOf: row.id }, 'job re-run')
    return c.json(body satisfies SubmitJobResponse, status)
  })

  /**
   * The BullMQ job of a retrying row is delayed until its next attempt: promoted, it waits for a host
   * now. A host writes the row before it moves its job to delayed, so an active job is given a moment.
   */
  async function promote(jobId: string): Promise<void> {
    const deadline = Date.now() + SETTLE_MS
    for (;;) {
      const job = await onBackend('Redis', () => queue.getJob(jobId))
      // Gone from the queue: the reconciler re-adds it from the row, whose attempt is due now.
      if (!job) return
      const state = await onBackend('Redis', () => job.getState())
      if (state === 'delayed') {
        try {
          await onBackend('Redis', () => job.promote())
          return
        } catch (err) {
          // Taken out of delayed meanwhile (its time came): it waits for a host already.
          if (err instanceof ApiError) throw err
          if ((await onBackend('Redis', () => job.getState())) !== 'delayed') return
          throw err
        }
      }
      if (state !== 'active') return
      if (Date.now() >= deadline)
        throw new ApiError(
          409,
          'conflict',
          'job is retrying, but its GPU host is still putting it back in the queue; try again shortly',
        )
      await sleep(SETTLE_POLL_MS)
    }
  }

  app.post('/api/jobs/:jobId/retry', async (c) => {
    const row = await access.visibleJob(c.req.param('jobId'), c.get('owner'))
    const jobId = row.id
    const notRetrying = (status: string) =>
      new ApiError(409, 'conflict', `job is ${status}, not retrying: only a retrying job can be retried now`)
    if (row.status !== 'retrying') throw notRetrying(row.status)
    const written = await store.retryNow(jobId, row.attempt)
    if (!written) {
      const now = await store.get(jobId)
      // Another retry (or the backoff's end) made the next attempt due first: it starts once a slot is free.
      if (now?.status === 'retrying' && now.attempt === row.attempt)
        throw new ApiError(
          409,
          'conflict',
          `job's attempt ${row.attempt + 1} is due already (retried, or its wait is over): it starts as a GPU slot frees`,
        )
      if (now?.status === 'retrying')
        throw new ApiError(
          409,
          'conflict',
          `job has moved on: attempt ${now.attempt} ran since, and it waits after that one now; retry again to start attempt ${now.attempt + 1} at once`,
        )
      // Started, cancelled or finished since it was read.
      throw notRetrying(now?.status ?? row.status)
    }
    await promote(jobId)
    deps.onChanged(jobId)
    logger.info({ jobId, attempt: written.attempt + 1 }, 'retry requested: next attempt now')
    const after = await store.get(jobId)
    // Cancelled between the write and now, before the attempt it asked for began: none will come of it.
    if (after && isTerminal(after.status) && after.attempt <= written.attempt) throw notRetrying(after.status)
    return c.json({ jobId, status: after?.status ?? written.status } satisfies RetryJobResponse, 202)
  })
  return app
}
