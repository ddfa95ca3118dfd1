/**
 * The job resource: submit (`POST /api/train`, alias `POST /api/jobs`), list (`GET /api/jobs`) and cancel
 * (`POST /api/jobs/:jobId/cancel`), with the one submit path (`jobSubmitter`) that re-runs (actions.ts)
 * share. Status bodies are routes/status.ts; a submit's body rules are schema/submission.ts.
 */
import { randomUUID } from 'node:crypto'
import { isDeepStrictEqual } from 'node:util'
import type { Queue } from 'bullmq'
import { type Context, Hono } from 'hono'
import type { Redis } from 'ioredis'
import type { Logger } from 'pino'
import * as v from 'valibot'
import type { SubmitJobBody, SubmitJobResponse } from '../../schema/api.ts'
import { type BackoffPolicy, backoffDelay } from '../../schema/backoff.ts'
import { isTerminal, JobId, JobStatus } from '../../schema/common.ts'
import type { Config } from '../../schema/config.ts'
import type { JobRow } from '../../schema/db/tables.ts'
import type { JobEnvelope } from '../../schema/envelope.ts'
import { announceQueued, cancelByRequest } from '../../schema/jobs/requests.ts'
import { findUnsafeJson } from '../../schema/json-safety.ts'
import { CANCEL_CHANNEL, cancelKey, eventLogKey, seqKey } from '../../schema/keys.ts'
import { JobType, outputPrefixFor, TYPE_DEFAULTS } from '../../schema/params/index.ts'
import { checkSubmission } from '../../schema/submission.ts'
import {
  ApiError,
  BackendUnavailableError,
  isBackendDown,
  isUnsentRedisCommand,
  onBackend,
} from '../errors.ts'
import type { GatewayMetrics } from '../metrics.ts'
import { jsonBody } from '../middleware/body.ts'
import { isNotQueued, type JobStore, NOT_QUEUED } from '../store.ts'
import type { JobAccess } from './access.ts'
import { summaryOf } from './status.ts'

/** The largest request body a submit may send. */
export const MAX_BODY_BYTES = 1024 * 1024
/** How long the gateway keeps trying to clean up a submit whose add had an unknown outcome, and how often. */
const RECONCILE_FOR_MS = 10 * 60_000
const RECONCILE_BACKOFF: BackoffPolicy = { baseMs: 1000, maxMs: 10_000, jitter: 0.5 }
/** The 503 rule of a submit (README "Security"). */
const NOTHING_QUEUED = 'nothing was queued; send the same request again'

export interface JobsDeps {
  config: Config
  store: JobStore
  /** Commands (fail fast: schema/clients.ts FAIL_FAST_REDIS). */
  redis: Redis
  queue: Queue
  metrics: GatewayMetrics
  logger: Logger
  access: JobAccess
  /** Called when a route changed a job's state here (the status cache drops it). */
  onChanged: (jobId: string) => void
}

/**
 * With API tokens a jobId the client chooses is scoped to its token: `<name>.<jobId>` (an id that starts
 * with `<name>.` already, or that this token owns already, is kept). Two tokens never compete for an id, so a submit tells nothing about
 * another token's jobs. Names cannot contain "." (schema/config.ts), so scoped ids never collide.
 */
export function scopedJobId(owner: string | null, requested: string): string {
  if (owner === null) return requested
  const prefix = `${owner}.`
  return requested.startsWith(prefix) ? requested : `${prefix}${requested}`
}

type Request = Pick<SubmitJobBody, 'type' | 'params'> & {
  priority: number | undefined
  timeoutSec: number | undefined
  maxAttempts: number
}
/** Whether a stored job is the one this request asks for (the same jobId resubmitted). */
const sameRequest = (row: JobRow, req: Request): boolean =>
  row.type === req.type &&
  isDeepStrictEqual(row.params, JSON.parse(JSON.stringify(req.params))) &&
  (row.priority ?? undefined) === req.priority &&
  (row.timeoutSec ?? undefined) === req.timeoutSec &&
  row.maxAttempts === req.maxAttempts

/** A submit's body, checked: 400 (invalid), 413 (params over MAX_PARAMS_BYTES). */
async function checkBody(raw: unknown, config: Config): Promise<SubmitJobBody> {
  // Quota: what one job may hold in Redis and Postgres, before the params' own rules (a long string
  // is over the quota whatever else is wrong with it). Only JSON that is safe to walk is measured here:
  // stringify recurses, and checkSubmission reports what is unsafe.
  const rawParams = (raw as { params?: unknown } | null)?.params
  if (
    rawParams !== undefined &&
    findUnsafeJson(rawParams) === null &&
    Buffer.byteLength(JSON.stringify(rawParams)) > config.maxParamsBytes
  ) {
    const message = `must be at most ${config.maxParamsBytes} bytes as JSON (MAX_PARAMS_BYTES)`
    throw new ApiError(413, 'too_large', `params ${message}`, [{ path: 'params', message }])
  }
  const checked = await checkSubmission(raw, {
    dataDir: config.dataDir,
    defaultEngines: config.defaultEngines,
  })
  if (!checked.ok) throw new ApiError(400, checked.code, checked.message, checked.issues)
  return checked.body
}

/** The submit's body, parsed and checked (see checkBody). */
async function readSubmission(c: Context, config: Config): Promise<SubmitJobBody> {
  let raw: unknown
  try {
    raw = await c.req.json()
  } catch {
    throw new ApiError(400, 'invalid_json', 'the body must be valid JSON')
  }
  return checkBody(raw, config)
}

/** What a submit answers: 202 with a new job, 200 with the existing one of the same jobId. */
export interface Submitted {
  code: 200 | 202
  body: SubmitJobResponse
}

export interface JobSubmitter {
  /**
   * Submits a checked body as `owner`: the row (quota), the BullMQ add, the queued event. A body without
   * `jobId` gets a random UUID.
   */
  submit(owner: string | null, body: SubmitJobBody): Promise<Submitted>
  /** The checks of a submit's body, for a body the gateway builds itself (a re-run). */
  check(raw: unknown): Promise<SubmitJobBody>
}

/**
 * The one submit path, shared by `POST /api/train` and `POST /api/jobs/:jobId/rerun`.
 *
 * @example const { submit } = jobSubmitter(deps); const { code, body } = await submit(owner, checked)
 */
export function jobSubmitter(deps: Omit<JobsDeps, 'access' | 'onChanged'>): JobSubmitter {
  const { config, store, redis, queue, metrics, logger } = deps

  /**
   * Makes sure Redis holds nothing of a submit that answered 503 (its add may have landed): the BullMQ
   * job removed (a host that took it meanwhile skips it: its row is a cancelled tombstone), its event
   * keys deleted, then the tombstone row. Throws a 503 while Redis cannot confirm it.
   */
  async function clearNotQueued(jobId: string): Promise<void> {
    await onBackend('Redis', async () => {
      await queue.remove(jobId)
      if ((await queue.getJobState(jobId)) !== 'unknown')
        throw new BackendUnavailableError(
          'Redis',
          'an earlier submit of this jobId is being undone; retry shortly',
        )
      await redis.del(seqKey(jobId), eventLogKey(jobId))
    })
    await store.removeNotQueued(jobId)
  }
  const reconcileLater = (jobId: string, until = Date.now() + RECONCILE_FOR_MS, failures = 0) => {
    setTimeout(
      () => {
        clearNotQueued(jobId).then(
          () => logger.info({ jobId }, 'unqueued submit cleaned up'),
          (err: unknown) => {
            if (Date.now() < until) reconcileLater(jobId, until, failures + 1)
            else logger.error({ jobId, err: (err as Error).message }, 'could not clean up an unqueued submit')
          },
        )
      },
      backoffDelay(failures + 1, RECONCILE_BACKOFF),
    ).unref()
  }

  /**
   * Adds the BullMQ job. The add comes first: a refused add leaves nothing in Redis. The rule for the
   * client: a 503 means nothing was queued and the same request may be sent again.
   */
  async function enqueue(envelope: JobEnvelope, priority: number | undefined): Promise<void> {
    const { jobId } = envelope
    try {
      await queue.add(envelope.type, envelope, {
        jobId,
        ...(priority === undefined ? {} : { priority }),
        removeOnComplete: { age: 7 * 86_400, count: 10_000 },
        removeOnFail: { age: 30 * 86_400, count: 50_000 },
      })
    } catch (err) {
      const unsent = isUnsentRedisCommand(err)
      if (unsent || !isBackendDown(err)) {
        // Never sent (Redis disconnected), or refused by BullMQ: nothing is in Redis, so no row either.
        await store.remove(jobId).catch(() => {})
        if (unsent) throw new BackendUnavailableError('Redis', NOTHING_QUEUED, { cause: err })
        throw err
      }
      // Sent, but no answer: the add may land later. The row becomes a tombstone that no host runs, and
      // what Redis holds of it is removed as soon as Redis answers.
      await store
        .cancel(jobId, NOT_QUEUED, 'not queued')
        .catch((e: unknown) =>
          logger.error({ jobId, err: (e as Error).message }, 'could not mark an unqueued submit'),
        )
      reconcileLater(jobId)
      throw new BackendUnavailableError('Redis', NOTHING_QUEUED, { cause: err })
    }
  }

  /**
   * A queued job's event, then its history: the row is written already (by `store.claim`). Skipped if a
   * host already emitted the job's first event (seq order holds). Best effort: the job is queued anyway.
   */
  async function recordQueued(jobId: string, type: JobType): Promise<void> {
    try {
      await announceQueued({ redis, records: store }, { jobId, type })
    } catch (err) {
      logger.warn({ jobId, err: (err as Error).message }, 'job queued, but its queued event was not recorded')
    }
  }

  async function submit(owner: string | null, body: SubmitJobBody): Promise<Submitted> {
    const { type, jobId: requestedId, priority, timeoutSec, maxAttempts } = body
    // An id this token owns already (one the API generated for it) is kept: resubmitting it is idempotent.
    const owned =
      requestedId !== undefined && owner !== null && (await store.get(requestedId))?.owner === owner
    const jobId =
      requestedId === undefined ? randomUUID() : owned ? requestedId : scopedJobId(owner, requestedId)
    if (!v.is(JobId, jobId)) {
      const message = `must be at most ${128 - (owner?.length ?? 0) - 1} characters with this token (ids are scoped as <name>.<jobId>)`
      throw new ApiError(400, 'invalid_request', `invalid request: jobId ${message}`, [
        { path: 'jobId', message },
      ])
    }
    const outputPrefix = outputPrefixFor(type, jobId)
    const urls = {
      statusUrl: `/api/status/${encodeURIComponent(jobId)}`,
      streamUrl: `/ws?jobId=${encodeURIComponent(jobId)}`,
    }
    const request: Request = {
      type,
      params: body.params,
      priority,
      timeoutSec,
      maxAttempts: maxAttempts ?? TYPE_DEFAULTS[type].maxAttempts,
    }
    // Params as the client sent them (validated); the host applies defaults again when it parses them.
    const newJob = { jobId, owner, outputPrefix, ...request }
    let claimed = await store.claim(newJob, config.maxQueuedJobsPerToken)
    if ('existing' in claimed && isNotQueued(claimed.existing) && claimed.existing.owner === owner) {
      // A resubmit after a 503: undo what may be left of the first try, then submit afresh.
      await clearNotQueued(jobId)
      claimed = await store.claim(newJob, config.maxQueuedJobsPerToken)
    }
    if ('overQuota' in claimed)
      throw new ApiError(
        429,
        'quota_exceeded',
        `at most ${config.maxQueuedJobsPerToken} unfinished jobs per token (MAX_QUEUED_JOBS_PER_TOKEN); wait for some to finish or cancel some`,
      )
    if ('existing' in claimed) {
      const existing = claimed.existing
      if (existing.owner !== owner || !sameRequest(existing, request))
        throw new ApiError(409, 'conflict', `jobId "${jobId}" is already used by a different request`)
      return { code: 200, body: { jobId, status: existing.status, ...urls } }
    }
    await enqueue(
      {
        jobId,
        type,
        params: body.params,
        artifacts: { outputPrefix },
        owner,
        ...(priority === undefined ? {} : { priority }),
        ...(timeoutSec === undefined ? {} : { timeoutSec }),
        ...(maxAttempts === undefined ? {} : { maxAttempts }),
      },
      priority,
    )
    await recordQueued(jobId, type)
    metrics.submitted.inc({ type })
    logger.info({ jobId, type, owner }, 'job queued')
    return { code: 202, body: { jobId, status: 'queued', ...urls } }
  }
  return { submit, check: (raw) => checkBody(raw, config) }
}

/** @example app.route('/', jobRoutes({ config, store, redis, queue, metrics, logger, access, onChanged })) */
export function jobRoutes(deps: JobsDeps): Hono {
  const { config, store, redis, queue, access } = deps
  const authRequired = config.apiTokens.size > 0
  const app = new Hono()
  const submitter = jobSubmitter(deps)

  const submit = async (c: Context) => {
    const { code, body } = await submitter.submit(c.get('owner'), await readSubmission(c, config))
    return c.json(body satisfies SubmitJobResponse, code)
  }
  const body = jsonBody({ maxBytes: MAX_BODY_BYTES })
  app.post('/api/train', body, submit)
  app.post('/api/jobs', body, submit)

  app.get('/api/jobs', async (c) => {
    const q = c.req.query()
    const issues: { path: string; message: string }[] = []
    const limitN = q.limit === undefined ? 50 : Number(q.limit)
    if (!Number.isInteger(limitN) || limitN < 1 || limitN > 500)
      issues.push({ path: 'limit', message: 'must be an integer from 1 to 500' })
    if (q.status !== undefined && !v.is(JobStatus, q.status))
      issues.push({ path: 'status', message: 'must be a job status' })
    if (q.type !== undefined && !v.is(JobType, q.type))
      issues.push({ path: 'type', message: 'must be a job type' })
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
    const removed = await queue.remove(jobId).catch(() => 0)
    if (removed === 1 || row.status === 'queued' || row.status === 'retrying') {
      const fresh = await store.get(jobId)
      if (fresh && !isTerminal(fresh.status) && (removed === 1 || fresh.status !== 'running'))
        await cancelUnrun(fresh)
    }
    await onBackend('Redis', () => redis.publish(CANCEL_CHANNEL, JSON.stringify({ jobId })))
    deps.onChanged(jobId)
    const after = await store.get(jobId)
    return c.json({ jobId, status: after?.status ?? row.status, cancelRequested: true }, 202)
  })
  return app
}
