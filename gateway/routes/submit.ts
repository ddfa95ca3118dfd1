/**
 * The submit path, shared by every route that creates jobs (`POST /api/train`, `POST /api/jobs/batch`, a
 * re-run): a body checked, its jobId settled for its owner, its row claimed (quota, resubmit, conflict),
 * its BullMQ job added, its queued event announced. A 503 means nothing was queued (README "Security").
 */
import { randomUUID } from 'node:crypto'
import type { Queue } from 'bullmq'
import type { Context } from 'hono'
import type { Redis } from 'ioredis'
import type { Logger } from 'pino'
import * as v from 'valibot'
import type { SubmitJobBody, SubmitJobResponse } from '../../schema/api.ts'
import { type BackoffPolicy, backoffDelay } from '../../schema/backoff.ts'
import { JobId } from '../../schema/common.ts'
import type { Config } from '../../schema/config.ts'
import type { JobEnvelope } from '../../schema/envelope.ts'
import type { FieldIssue } from '../../schema/issues.ts'
import { announceQueued } from '../../schema/jobs/requests.ts'
import { findUnsafeJson } from '../../schema/json-safety.ts'
import { eventLogKey, seqKey } from '../../schema/keys.ts'
import { outputPrefixFor, TYPE_DEFAULTS } from '../../schema/params/index.ts'
import { checkSubmission } from '../../schema/submission.ts'
import {
  ApiError,
  BackendUnavailableError,
  isBackendDown,
  isUnsentRedisCommand,
  onBackend,
} from '../errors.ts'
import type { GatewayMetrics } from '../metrics.ts'
import { type JobStore, type NewJob, NOT_QUEUED } from '../store.ts'

/** The largest request body a submit may send. */
export const MAX_BODY_BYTES = 1024 * 1024
/** How long the gateway keeps trying to clean up a submit whose add had an unknown outcome, and how often. */
const RECONCILE_FOR_MS = 10 * 60_000
const RECONCILE_BACKOFF: BackoffPolicy = { baseMs: 1000, maxMs: 10_000, jitter: 0.5 }
/** The 503 rule of a submit (README "Security"). */
const NOTHING_QUEUED = 'nothing was queued; send the same request again'
/** How long BullMQ keeps finished jobs. */
const KEEP = {
  removeOnComplete: { age: 7 * 86_400, count: 10_000 },
  removeOnFail: { age: 30 * 86_400, count: 50_000 },
}

export interface SubmitDeps {
  config: Config
  store: JobStore
  /** Commands (fail fast: schema/clients.ts FAIL_FAST_REDIS). */
  redis: Redis
  queue: Queue
  metrics: GatewayMetrics
  logger: Logger
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

/** `jobs[3].params.epochs`: a field of the body at `at` in a larger one (none: the field as it is). */
const fieldAt = (at: string | undefined, path: string): string =>
  at === undefined ? path : path === '(body)' ? at : `${at}.${path}`

/** A request's JSON body: 400 `invalid_json` when it is not JSON. */
export async function readJson(c: Context): Promise<unknown> {
  try {
    return await c.req.json()
  } catch {
    throw new ApiError(400, 'invalid_json', 'the body must be valid JSON')
  }
}

/**
 * A submit body, checked: 400 (invalid), 413 (params over MAX_PARAMS_BYTES). `at` says where the body is
 * in a larger one (`jobs[3]`): the issues' paths and the message name the field there.
 *
 * @example const body = await checkBody(await readJson(c), config)
 */
export async function checkBody(raw: unknown, config: Config, at?: string): Promise<SubmitJobBody> {
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
    const path = fieldAt(at, 'params')
    throw new ApiError(413, 'too_large', `${path} ${message}`, [{ path, message }])
  }
  const checked = await checkSubmission(raw, {
    dataDir: config.dataDir,
    defaultEngines: config.defaultEngines,
  })
  if (checked.ok) return checked.body
  if (at === undefined) throw new ApiError(400, checked.code, checked.message, checked.issues)
  const issues: FieldIssue[] = checked.issues.map((i) => ({ ...i, path: fieldAt(at, i.path) }))
  const what = checked.code === 'invalid_params' ? 'invalid params' : 'invalid request'
  const first = issues[0] ?? { path: at, message: 'is not valid' }
  throw new ApiError(400, checked.code, `${what}: ${first.path} ${first.message}`, issues)
}

/** A submit's answer: 202 queued, or 200 for a jobId resubmitted with the same request. */
export interface Submitted {
  status: 200 | 202
  body: SubmitJobResponse
}

export interface Submitter {
  /**
   * Submits one checked body for `owner` (null without API tokens). Throws the API's errors: 400 (a jobId
   * too long once scoped), 409 (the jobId holds a different request), 429 (quota), 503 (nothing queued).
   *
   * @example const { status, body } = await submitter.submitOne(await checkBody(raw, config), owner)
   */
  submitOne(body: SubmitJobBody, owner: string | null): Promise<Submitted>
  /**
   * Submits checked bodies together, all or none: one BullMQ add for all of them, the quota counted for
   * all of them; a conflict, the quota or Redis refuses the whole lot before anything is queued. `at(i)`
   * names the i-th body in the errors (`jobs[3]`). Answers in the bodies' order.
   */
  submitMany(bodies: SubmitJobBody[], owner: string | null, at: (i: number) => string): Promise<Submitted[]>
}

/** A body on its way in: its settled jobId, its row (compared on a resubmit), and what is queued. */
interface Plan {
  jobId: string
  job: NewJob
  envelope: JobEnvelope
  at: string | undefined
}

/** @example const submitter = jobSubmitter({ config, store, redis, queue, metrics, logger }) */
export function jobSubmitter(deps: SubmitDeps): Submitter {
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
   * Adds the BullMQ jobs: one `add`, or one `addBulk` (a MULTI: all or none) for several. The add comes
   * after the rows and before the events: a refused add leaves nothing in Redis and its rows are removed;
   * an add that was sent but not answered may land later, so its rows become tombstones that no host runs,
   * and what Redis holds of them is removed as soon as Redis answers.
   */
  async function enqueue(envelopes: JobEnvelope[]): Promise<void> {
    const opts = (e: JobEnvelope) => ({
      jobId: e.jobId,
      ...(e.priority === undefined ? {} : { priority: e.priority }),
      ...KEEP,
    })
    const [only] = envelopes
    try {
      if (envelopes.length === 1 && only) await queue.add(only.type, only, opts(only))
      else await queue.addBulk(envelopes.map((e) => ({ name: e.type, data: e, opts: opts(e) })))
    } catch (err) {
      const unsent = isUnsentRedisCommand(err)
      if (unsent || !isBackendDown(err)) {
        // Never sent (Redis disconnected), or refused by BullMQ: nothing is in Redis, so no row either.
        await store.remove(envelopes.map((e) => e.jobId)).catch(() => {})
        if (unsent) throw new BackendUnavailableError('Redis', NOTHING_QUEUED, { cause: err })
        throw err
      }
      for (const { jobId } of envelopes) {
        await store
          .cancel(jobId, NOT_QUEUED, 'not queued')
          .catch((e: unknown) =>
            logger.error({ jobId, err: (e as Error).message }, 'could not mark an unqueued submit'),
          )
        reconcileLater(jobId)
      }
      throw new BackendUnavailableError('Redis', NOTHING_QUEUED, { cause: err })
    }
  }

  /**
   * The queued jobs' events, then their history: the rows are written already (by `store.claimMany`).
   * A job is skipped if a host already emitted its first event (seq order holds). Best effort: the jobs
   * are queued anyway.
   */
  async function recordQueued(envelopes: JobEnvelope[]): Promise<void> {
    try {
      await announceQueued({ redis, records: store }, envelopes)
    } catch (err) {
      logger.warn(
        { jobIds: envelopes.map((e) => e.jobId), err: (err as Error).message },
        'jobs queued, but their queued events were not recorded',
      )
    }
  }

  /**
   * The jobIds bodies get for `owner` (none: the same for each), their rows and envelopes. An id this token
   * owns already (one the API generated for it) is kept: resubmitting it is idempotent. One read finds
   * the owned ones, only among ids that scoping would change (an id with the token's prefix stays as it is).
   */
  async function plansOf(
    bodies: SubmitJobBody[],
    owner: string | null,
    at?: (i: number) => string,
  ): Promise<Plan[]> {
    const asked =
      owner === null
        ? []
        : bodies.flatMap(({ jobId }) =>
            jobId === undefined || jobId === scopedJobId(owner, jobId) ? [] : [jobId],
          )
    const owners = asked.length > 0 ? await store.ownersOf(asked) : new Map<string, string | null>()
    return bodies.map((body, i) => {
      const where = at?.(i)
      const { type, jobId: requestedId, priority, timeoutSec, maxAttempts, gpu } = body
      const jobId =
        requestedId === undefined
          ? randomUUID()
          : owner !== null && owners.get(requestedId) === owner
            ? requestedId
            : scopedJobId(owner, requestedId)
      if (!v.is(JobId, jobId)) {
        const message = `must be at most ${128 - (owner?.length ?? 0) - 1} characters with this token (ids are scoped as <name>.<jobId>)`
        const path = fieldAt(where, 'jobId')
        throw new ApiError(400, 'invalid_request', `invalid request: ${path} ${message}`, [{ path, message }])
      }
      const outputPrefix = outputPrefixFor(type, jobId)
      // Params as the client sent them (validated); the host applies defaults again when it parses them.
      const job: NewJob = {
        jobId,
        type,
        params: body.params,
        owner,
        priority,
        timeoutSec,
        maxAttempts: maxAttempts ?? TYPE_DEFAULTS[type].maxAttempts,
        outputPrefix,
        gpu,
      }
      const envelope: JobEnvelope = {
        jobId,
        type,
        params: body.params,
        artifacts: { outputPrefix },
        owner,
        ...(priority === undefined ? {} : { priority }),
        ...(timeoutSec === undefined ? {} : { timeoutSec }),
        ...(maxAttempts === undefined ? {} : { maxAttempts }),
        ...(gpu === undefined ? {} : { gpu }),
      }
      return { jobId, job, envelope, at: where }
    })
  }

  /**
   * The rows claimed together (one transaction: a resubmit keeps its row; a conflict or the quota writes
   * none), then one add for the new jobs, then their queued events.
   */
  async function submit(plans: Plan[], owner: string | null): Promise<Submitted[]> {
    const batch = plans.length > 1 || plans[0]?.at !== undefined
    const nothing = batch ? '; nothing in this batch was queued' : ''
    const jobs = plans.map((p) => p.job)
    let claimed = await store.claimMany(jobs, config.maxQueuedJobsPerToken)
    if ('notQueued' in claimed) {
      // Resubmits after a 503: undo what may be left of the first try, then submit afresh.
      await Promise.all(claimed.notQueued.map(clearNotQueued))
      claimed = await store.claimMany(jobs, config.maxQueuedJobsPerToken, { undoNotQueued: false })
    }
    if ('overQuota' in claimed)
      throw new ApiError(
        429,
        'quota_exceeded',
        `at most ${config.maxQueuedJobsPerToken} unfinished jobs per token (MAX_QUEUED_JOBS_PER_TOKEN); wait for some to finish or cancel some${nothing}`,
      )
    if ('conflict' in claimed) {
      const plan = plans[claimed.conflict]
      const path = fieldAt(plan?.at, 'jobId')
      const message = `jobId "${plan?.jobId}" is already used by a different request${nothing}`
      throw new ApiError(
        409,
        'conflict',
        plan?.at === undefined ? message : `${path}: ${message}`,
        plan?.at === undefined ? undefined : [{ path, message: 'is already used by a different request' }],
      )
    }
    if (!('rows' in claimed)) throw new Error('a second claim reports no tombstones')
    const { rows } = claimed
    const created = plans.filter((_, i) => rows[i]?.created)
    if (created.length > 0) {
      const envelopes = created.map((p) => p.envelope)
      await enqueue(envelopes)
      await recordQueued(envelopes)
    }
    for (const { envelope } of created) {
      metrics.submitted.inc({ type: envelope.type })
      // The owner only when there is one (no `owner: null` on every line of a token-less gateway).
      logger.info(
        { jobId: envelope.jobId, type: envelope.type, ...(owner === null ? {} : { owner }) },
        'job queued',
      )
    }
    return plans.map(({ jobId }, i) => {
      const claim = rows[i]
      const row = claim && !claim.created ? claim.row : null
      const body: SubmitJobResponse = {
        jobId,
        status: row ? row.status : 'queued',
        statusUrl: `/api/status/${encodeURIComponent(jobId)}`,
        streamUrl: `/ws?jobId=${encodeURIComponent(jobId)}`,
      }
      return { status: row ? 200 : 202, body }
    })
  }

  return {
    async submitOne(body, owner) {
      const [answer] = await submit(await plansOf([body], owner), owner)
      if (!answer) throw new Error('a submit of one body answers once')
      return answer
    },
    async submitMany(bodies, owner, at) {
      const plans = await plansOf(bodies, owner, at)
      // The same jobId twice in one batch: which of the two would it be?
      const first = new Map<string, number>()
      for (const [i, { jobId }] of plans.entries()) {
        const j = first.get(jobId)
        if (j === undefined) {
          first.set(jobId, i)
          continue
        }
        const message = `repeats the jobId of ${at(j)}`
        const path = fieldAt(at(i), 'jobId')
        throw new ApiError(400, 'invalid_request', `invalid request: ${path} ${message}`, [{ path, message }])
      }
      return submit(plans, owner)
    },
  }
}
