/**
 * The job resource: submit (`POST /api/train`, alias `POST /api/jobs`), list and search (`GET /api/jobs`)
 * and cancel (`POST /api/jobs/:jobId/cancel`). The submit path is routes/submit.ts (batches: routes/batch.ts),
 * status bodies are routes/status.ts; a submit's body rules are schema/submission.ts.
 */
import { type Context, Hono } from 'hono'
import * as v from 'valibot'
import { isTerminal, JobStatus } from '../../schema/common.ts'
import type { JobRow } from '../../schema/db/tables.ts'
import { cancelByRequest } from '../../schema/jobs/requests.ts'
import { jsonSafetyIssue } from '../../schema/json-safety.ts'
import { CANCEL_CHANNEL, cancelKey } from '../../schema/keys.ts'
import { JobType } from '../../schema/params/index.ts'
import { ApiError, BackendUnavailableError, backendOf, isBackendDown, onBackend } from '../errors.ts'
import { jsonBody } from '../middleware/body.ts'
import { queryValues } from '../query.ts'
import type { JobAccess } from './access.ts'
import { summaryOf } from './status.ts'
import { checkBody, MAX_BODY_BYTES, readJson, type SubmitDeps, type Submitter } from './submit.ts'

export { MAX_BODY_BYTES, scopedJobId } from './submit.ts'

/** The longest `?q=` of a list. */
export const MAX_QUERY_CHARS = 200

export interface JobsDeps extends SubmitDeps {
  access: JobAccess
  /** The submit path (routes/submit.ts), shared with the batch and re-run routes. */
  submitter: Submitter
  /** Called when a route changed a job's state here (the status cache drops it). */
  onChanged: (jobId: string) => void
}

/** @example app.route('/', jobRoutes({ config, store, redis, queue, metrics, logger, access, submitter, onChanged })) */
export function jobRoutes(deps: JobsDeps): Hono {
  const { config, store, redis, queue, access, submitter } = deps
  const authRequired = config.apiTokens.size > 0
  const app = new Hono()

  const submit = async (c: Context) => {
    const body = await checkBody(await readJson(c), config)
    const { status, body: answer } = await submitter.submitOne(body, c.get('owner'))
    return c.json(answer, status)
  }
  const body = jsonBody({ maxBytes: MAX_BODY_BYTES })
  app.post('/api/train', body, submit)
  app.post('/api/jobs', body, submit)

  app.get('/api/jobs', async (c) => {
    const q = queryValues(c, ['limit', 'status', 'type', 'q', 'cursor'])
    const issues: { path: string; message: string }[] = []
    const limitN = q.limit === undefined ? 50 : Number(q.limit)
    if (!Number.isInteger(limitN) || limitN < 1 || limitN > 500)
      issues.push({ path: 'limit', message: 'must be an integer from 1 to 500' })
    if (q.status !== undefined && !v.is(JobStatus, q.status))
      issues.push({ path: 'status', message: 'must be a job status' })
    if (q.type !== undefined && !v.is(JobType, q.type))
      issues.push({ path: 'type', message: 'must be a job type' })
    // Characters, not UTF-16 units: an emoji is one.
    if (q.q !== undefined && [...q.q].length > MAX_QUERY_CHARS)
      issues.push({ path: 'q', message: `must be at most ${MAX_QUERY_CHARS} characters` })
    else if (q.q !== undefined) {
      const unsafe = jsonSafetyIssue(q.q, 'q')
      if (unsafe) issues.push(unsafe)
    }
    if (issues.length)
      throw new ApiError(
        400,
        'invalid_query',
        `invalid query: ${issues[0]?.path} ${issues[0]?.message}`,
        issues,
      )
    const page = await store.list({
      owner: authRequired ? c.get('owner') : undefined,
      status: q.status as JobStatus | undefined,
      type: q.type as JobType | undefined,
      limit: limitN,
      cursor: q.cursor,
      // An empty search (a cleared search box) is no search.
      q: q.q || undefined,
    })
    if ('badCursor' in page)
      throw new ApiError(400, 'invalid_query', 'invalid query: cursor is not one this API gave out', [
        { path: 'cursor', message: 'unknown cursor' },
      ])
    return c.json({ jobs: page.rows.map(summaryOf), nextCursor: page.nextCursor })
  })

  /**
   * Cancels a job no host runs (queued, retrying, or just removed from the queue): the row first, then
   * the event (whoever sees the event finds the final state stored), then the history.
   */
  const cancelUnrun = (fresh: JobRow) =>
    cancelByRequest({ redis, records: store, onRedis: (fn) => onBackend('Redis', fn) }, fresh)

  app.post('/api/jobs/:jobId/cancel', async (c) => {
    const row = await access.visibleJob(c.req.param('jobId'), c.get('owner'))
    if (isTerminal(row.status)) throw new ApiError(409, 'conflict', `job is already ${row.status}`)
    const jobId = row.id
    // Every host learns of it: a host about to start the job refuses, the one running it kills it.
    await onBackend('Redis', () => redis.set(cancelKey(jobId), '1', 'EX', 7 * 86_400))
    // The key is the cancel's record: a host running the job finds it within CANCEL_SWEEP_MS, one about
    // to start it refuses. So a backend lost from here on leaves the cancel to take effect once it is back.
    try {
      const removed = await queue.remove(jobId).catch(() => 0)
      if (removed === 1 || row.status === 'queued' || row.status === 'retrying') {
        const fresh = await store.get(jobId)
        if (fresh && !isTerminal(fresh.status) && (removed === 1 || fresh.status !== 'running'))
          await cancelUnrun(fresh)
      }
      // The quick way: the host running it kills it now.
      await onBackend('Redis', () => redis.publish(CANCEL_CHANNEL, JSON.stringify({ jobId })))
    } catch (err) {
      const backend =
        err instanceof BackendUnavailableError ? err.backend : isBackendDown(err) ? backendOf(err) : null
      if (backend === null) throw err
      throw new BackendUnavailableError(
        backend,
        'the cancel is recorded and the job ends cancelled once it is back; sending it again is safe',
        { cause: err },
      )
    } finally {
      deps.onChanged(jobId)
    }
    const after = await store.get(jobId)
    return c.json({ jobId, status: after?.status ?? row.status, cancelRequested: true }, 202)
  })
  return app
}
