import { randomUUID } from 'node:crypto'
import { isDeepStrictEqual } from 'node:util'
import { GetObjectCommand, type GetObjectCommandOutput, type S3Client } from '@aws-sdk/client-s3'
import type { Queue } from 'bullmq'
import { type Context, Hono } from 'hono'
import type { Redis } from 'ioredis'
import type { Logger } from 'pino'
import * as v from 'valibot'
import type { Artifact, JobStatusBody, JobSummary, SubmitJobBody, SubmitJobResponse } from '../schema/api.ts'
import { checkBackends } from '../schema/clients.ts'
import { isTerminal, JobId, JobStatus } from '../schema/common.ts'
import type { Config } from '../schema/config.ts'
import type { Database } from '../schema/db/connect.ts'
import type { JobArtifactRow, JobRow } from '../schema/db/tables.ts'
import type { JobEnvelope } from '../schema/envelope.ts'
import type { ProgressEvent } from '../schema/events.ts'
import { findUnsafeJson } from '../schema/json-safety.ts'
import { CANCEL_CHANNEL, cancelKey, eventLogKey, seqKey } from '../schema/keys.ts'
import { JobType, outputPrefixFor, TYPE_DEFAULTS } from '../schema/params/index.ts'
import { emitEvent, emitFirstEvent, lastEvent } from '../schema/progress-log.ts'
import { checkSubmission } from '../schema/submission.ts'
import { consoleApp } from './console/index.ts'
import { artifactPathOf, attachmentDisposition, byteRange } from './downloads.ts'
import { ApiError, BackendUnavailableError, isBackendDown, onBackend } from './errors.ts'
import type { EventHub } from './hub.ts'
import type { GatewayMetrics } from './metrics.ts'
import { auth } from './middleware/auth.ts'
import { jsonBody } from './middleware/body.ts'
import { errorHandler, notFound } from './middleware/errors.ts'
import { originGuard, originPolicy } from './middleware/origin.ts'
import {
  AUTH_FAILURE_BURST,
  AUTH_FAILURES_PER_SEC,
  authFailureLimit,
  rateLimit,
} from './middleware/rate-limit.ts'
import { openApiDocument } from './openapi.ts'
import { RateLimiter, type StreamCounter } from './rate-limit.ts'
import { sseEvents } from './sse.ts'
import { isNotQueued, JobStore, NOT_QUEUED } from './store.ts'

export const MAX_BODY_BYTES = 1024 * 1024
/** Longest a cached status body is served when no event of its job arrives (see `cachedStatus`). */
const STATUS_CACHE_MS = 1000
/** Routes that need no API token. */
const PUBLIC_PATHS = new Set(['/healthz', '/readyz', '/', '/openapi.json'])
/** Routes that answer probes and scrapers, which call by IP: no Host/Origin rule (they carry no job data). */
const PROBE_PATHS = new Set(['/healthz', '/readyz', '/metrics'])
/** The SSE route: with the WebSocket, the only place `?token=` is accepted (EventSource sends no header). */
const SSE_PATH = /^\/api\/jobs\/[^/]+\/events$/
/** How long the gateway keeps trying to clean up a submit whose add had an unknown outcome. */
const RECONCILE_FOR_MS = 10 * 60_000
/** The 503 rule of a submit (README "Security"). */
const NOTHING_QUEUED = 'nothing was queued; send the same request again'

export interface GatewayDeps {
  config: Config
  database: Database
  /** Commands (fail fast: schema/clients.ts FAIL_FAST_REDIS). */
  redis: Redis
  queue: Queue
  s3: S3Client
  hub: EventHub
  metrics: GatewayMetrics
  logger: Logger
  /** Open WebSockets and SSE streams per token (shared with the WebSocket server). */
  streams: StreamCounter
  /** Wrong tokens per client address (shared with the WebSocket upgrade, so both count toward one limit). */
  authFailures?: RateLimiter
}

const iso = (d: Date | null | undefined): string | null => (d ? d.toISOString() : null)

/** The event that stands for a job's stored state (used when its replay log is gone). */
export const rowSnapshot = (row: JobRow): ProgressEvent => ({
  jobId: row.id,
  status: row.status,
  progress: row.progress,
  message: row.message,
  timestamp: row.updatedAt.toISOString(),
  seq: Math.max(1, row.lastSeq),
  type: row.type,
  attempt: row.attempt,
})

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

/** The Hono app of the gateway: REST API, SSE, health and metrics (WebSocket is attached in server.ts). */
export function createApp(deps: GatewayDeps): {
  app: Hono
  store: JobStore
  statusBody: (row: JobRow) => Promise<JobStatusBody>
} {
  const { config, redis, queue, s3, hub, metrics, logger } = deps
  const store = new JobStore(deps.database.db)
  const app = new Hono()
  const authRequired = config.apiTokens.size > 0

  app.onError(errorHandler({ logger }))
  app.notFound(notFound)

  app.use(async function requestMetrics(c, next) {
    const start = performance.now()
    await next()
    const route = c.req.routePath || 'unmatched'
    metrics.httpDuration.observe(
      { method: c.req.method, route, status: String(c.res.status) },
      (performance.now() - start) / 1000,
    )
  })
  // The cross-cutting rules, in order: cross-site refusal, wrong-token throttle (before auth, per client
  // address), auth, then the per-token request rate.
  app.use(originGuard({ policy: originPolicy(config), exempt: (p) => PROBE_PATHS.has(p) }))
  app.use(
    authFailureLimit({
      limiter: deps.authFailures ?? new RateLimiter(AUTH_FAILURES_PER_SEC, AUTH_FAILURE_BURST),
      onLimited: () => metrics.rateLimited.inc(),
    }),
  )
  app.use(
    auth({
      tokens: config.apiTokens,
      metricsToken: config.metricsToken,
      // The console's page and assets carry no data: the API calls it makes are authorised like any other.
      isPublic: (p) => PUBLIC_PATHS.has(p) || p.startsWith('/console/'),
      acceptsQueryToken: (p) => SSE_PATH.test(p),
    }),
  )
  app.use(
    rateLimit({
      limiter: new RateLimiter(config.rateLimitRps),
      key: (c) => c.get('owner'),
      describe: `over ${config.rateLimitRps} requests per second`,
      onLimited: () => metrics.rateLimited.inc(),
    }),
  )

  app.get('/healthz', (c) => c.json({ ok: true }))
  app.route('/', consoleApp)
  app.get('/metrics', async (c) =>
    c.body(await metrics.registry.metrics(), 200, { 'content-type': metrics.registry.contentType }),
  )

  const openapi = JSON.stringify(openApiDocument())
  app.get('/openapi.json', (c) => c.body(openapi, 200, { 'content-type': 'application/json' }))

  // Public (Kubernetes probes send no token): says which backend is down, not why (that is logged).
  app.get('/readyz', async (c) => {
    const checks = await checkBackends({ redis, database: deps.database, s3, bucket: config.s3.bucket })
    const down = Object.entries(checks).filter(([, x]) => x !== 'ok')
    if (down.length) logger.warn({ checks }, 'not ready')
    const brief = {
      redis: checks.redis === 'ok' ? 'ok' : 'down',
      postgres: checks.postgres === 'ok' ? 'ok' : 'down',
      s3: checks.s3 === 'ok' ? 'ok' : 'down',
    }
    return c.json({ ok: down.length === 0, checks: brief }, down.length === 0 ? 200 : 503)
  })

  const artifactUrl = (jobId: string, path: string) =>
    `/api/jobs/${encodeURIComponent(jobId)}/artifacts/${path.split('/').map(encodeURIComponent).join('/')}`
  const toArtifact = (a: JobArtifactRow): Artifact => ({
    path: a.path,
    key: a.key,
    size: a.size,
    sha256: a.sha256,
    contentType: a.contentType,
    url: artifactUrl(a.jobId, a.path),
  })

  /** The stored row merged with the newest live event, which Postgres sees only a few times a second. */
  async function statusBody(row: JobRow): Promise<JobStatusBody> {
    // Artifacts are recorded when a job completes: an unfinished job has none to look up.
    const [live, artifacts] = await Promise.all([
      lastEvent(redis, row.id).catch(() => null),
      isTerminal(row.status) ? store.artifacts(row.id) : [],
    ])
    // A finished row is final; its last event may be published a moment after the row is written.
    const fresher = live && live.seq > row.lastSeq && !isTerminal(row.status) ? live : null
    const finalSeq =
      live && isTerminal(row.status) && live.status === row.status
        ? Math.max(live.seq, row.lastSeq)
        : row.lastSeq
    return {
      jobId: row.id,
      type: row.type,
      status: fresher?.status ?? row.status,
      progress: fresher?.progress ?? row.progress,
      message: fresher?.message ?? row.message,
      attempt: fresher?.attempt ?? row.attempt,
      maxAttempts: row.maxAttempts,
      params: row.params,
      result: row.result ?? null,
      error: row.error ?? null,
      artifacts: artifacts.map(toArtifact),
      createdAt: row.createdAt.toISOString(),
      startedAt: iso(row.startedAt),
      finishedAt: iso(row.finishedAt),
      updatedAt: row.updatedAt.toISOString(),
      nextAttemptAt: iso(row.nextAttemptAt),
      seq: fresher?.seq ?? finalSeq,
    }
  }

  /** A job the caller may see; another owner's job is a 404, as if it did not exist. */
  async function visibleJob(jobId: string, owner: string | null): Promise<JobRow> {
    if (!v.is(JobId, jobId)) throw new ApiError(404, 'not_found', 'no such job')
    const row = await store.get(jobId)
    if (!row || (authRequired && row.owner !== owner))
      throw new ApiError(404, 'not_found', `no job "${jobId}"`)
    return row
  }

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
  const reconcileLater = (jobId: string, until = Date.now() + RECONCILE_FOR_MS) => {
    setTimeout(() => {
      clearNotQueued(jobId).then(
        () => logger.info({ jobId }, 'unqueued submit cleaned up'),
        (err: unknown) => {
          if (Date.now() < until) reconcileLater(jobId, until)
          else logger.error({ jobId, err: (err as Error).message }, 'could not clean up an unqueued submit')
        },
      )
    }, 1000).unref()
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

  const submit = async (c: Context) => {
    let raw: unknown
    try {
      raw = await c.req.json()
    } catch {
      throw new ApiError(400, 'invalid_json', 'the body must be valid JSON')
    }
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
    const { body } = checked
    const { type, jobId: requestedId, priority, timeoutSec, maxAttempts } = body
    const owner = c.get('owner')
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
    const defaults = TYPE_DEFAULTS[type]
    const urls = {
      statusUrl: `/api/status/${encodeURIComponent(jobId)}`,
      streamUrl: `/ws?jobId=${encodeURIComponent(jobId)}`,
    }
    const request: Request = {
      type,
      params: body.params,
      priority,
      timeoutSec,
      maxAttempts: maxAttempts ?? defaults.maxAttempts,
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
      return c.json({ jobId, status: existing.status, ...urls } satisfies SubmitJobResponse, 200)
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
    }
    // The add first: a refused add leaves nothing in Redis. The rule for the client: a 503 means nothing
    // was queued and the same request may be sent again.
    try {
      await queue.add(type, envelope, {
        jobId,
        ...(priority === undefined ? {} : { priority }),
        removeOnComplete: { age: 7 * 86_400, count: 10_000 },
        removeOnFail: { age: 30 * 86_400, count: 50_000 },
      })
    } catch (err) {
      const unsent = /enableOfflineQueue/.test((err as Error | undefined)?.message ?? '')
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
    // Then the queued event, unless a host already emitted the job's first event (seq order holds).
    try {
      const event = await emitFirstEvent(redis, {
        jobId,
        type,
        status: 'queued',
        progress: 0,
        message: 'queued',
        attempt: 0,
        timestamp: new Date().toISOString(),
      })
      if (event) await store.recordEvent(event)
    } catch (err) {
      logger.warn({ jobId, err: (err as Error).message }, 'job queued, but its queued event was not recorded')
    }
    metrics.submitted.inc({ type })
    logger.info({ jobId, type, owner }, 'job queued')
    return c.json({ jobId, status: 'queued', ...urls } satisfies SubmitJobResponse, 202)
  }

  const body = jsonBody({ maxBytes: MAX_BODY_BYTES })
  app.post('/api/train', body, submit)
  app.post('/api/jobs', body, submit)

  /**
   * Status bodies, shared by concurrent requests and kept until the job's next event reaches this gateway
   * (or STATUS_CACHE_MS at most, in case an event is missed): pollers cost one Postgres and one Redis read
   * per job and event, not per request, and never see a state older than the last event seen here.
   */
  const statusCache = new Map<
    string,
    { at: number; entry: Promise<{ row: JobRow; body: JobStatusBody } | null> }
  >()
  hub.onEvent((event) => statusCache.delete(event.jobId))
  const cachedStatus = (jobId: string) => {
    const now = Date.now()
    const hit = statusCache.get(jobId)
    if (hit && now - hit.at < STATUS_CACHE_MS) return hit.entry
    const entry = store.get(jobId).then(async (row) => (row ? { row, body: await statusBody(row) } : null))
    statusCache.set(jobId, { at: now, entry })
    if (statusCache.size > 10_000)
      for (const [id, e] of statusCache) if (now - e.at >= STATUS_CACHE_MS) statusCache.delete(id)
    entry.catch(() => statusCache.delete(jobId))
    return entry
  }
  const status = async (c: Context) => {
    const jobId = c.req.param('jobId') ?? ''
    if (!v.is(JobId, jobId)) throw new ApiError(404, 'not_found', 'no such job')
    const found = await cachedStatus(jobId)
    if (!found || (authRequired && found.row.owner !== c.get('owner')))
      throw new ApiError(404, 'not_found', `no job "${jobId}"`)
    return c.json(found.body)
  }
  app.get('/api/status/:jobId', status)
  app.get('/api/jobs/:jobId', status)

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
    const jobs = page.rows.map(
      (row): JobSummary => ({
        jobId: row.id,
        type: row.type,
        status: row.status,
        progress: row.progress,
        message: row.message,
        attempt: row.attempt,
        maxAttempts: row.maxAttempts,
        error: row.error ?? null,
        createdAt: row.createdAt.toISOString(),
        startedAt: iso(row.startedAt),
        finishedAt: iso(row.finishedAt),
        updatedAt: row.updatedAt.toISOString(),
        nextAttemptAt: iso(row.nextAttemptAt),
        seq: row.lastSeq,
      }),
    )
    return c.json({ jobs, nextCursor: page.nextCursor })
  })

  app.post('/api/jobs/:jobId/cancel', async (c) => {
    const row = await visibleJob(c.req.param('jobId'), c.get('owner'))
    if (isTerminal(row.status)) throw new ApiError(409, 'conflict', `job is already ${row.status}`)
    const jobId = row.id
    // Every host learns of it: a host about to start the job refuses, the one running it kills it.
    await onBackend('Redis', () => redis.set(cancelKey(jobId), '1', 'EX', 7 * 86_400))
    const removed = await queue.remove(jobId).catch(() => 0)
    if (removed === 1 || row.status === 'queued' || row.status === 'retrying') {
      const fresh = await store.get(jobId)
      if (fresh && !isTerminal(fresh.status) && (removed === 1 || fresh.status !== 'running')) {
        const error = { code: 'CANCELLED', reason: 'cancelled' as const, message: 'cancelled by request' }
        // The row first, then the event: whoever sees the event finds the final state stored.
        if (await store.cancel(jobId, error, 'cancelled')) {
          const event = await onBackend('Redis', () =>
            emitEvent(
              redis,
              {
                jobId,
                type: row.type,
                status: 'cancelled',
                progress: fresh.progress,
                message: 'cancelled',
                attempt: fresh.attempt,
                timestamp: new Date().toISOString(),
              },
              { terminal: true },
            ),
          )
          await store.recordEvent(event)
        }
      }
    }
    await onBackend('Redis', () => redis.publish(CANCEL_CHANNEL, JSON.stringify({ jobId })))
    statusCache.delete(jobId)
    const after = await store.get(jobId)
    return c.json({ jobId, status: after?.status ?? row.status, cancelRequested: true }, 202)
  })

  // A stream cannot turn into a 503 once it has started: check that Redis answers before opening one.
  app.use('/api/jobs/:jobId/events', async function redisBeforeStream(_c, next) {
    await onBackend('Redis', () => redis.ping(), 'no live events now; retry shortly')
    return next()
  })

  app.get('/api/jobs/:jobId/artifacts', async (c) => {
    const row = await visibleJob(c.req.param('jobId'), c.get('owner'))
    return c.json({ artifacts: (await store.artifacts(row.id)).map(toArtifact) })
  })

  app.get('/api/jobs/:jobId/artifacts/*', async (c) => {
    const row = await visibleJob(c.req.param('jobId'), c.get('owner'))
    const rel = artifactPathOf(new URL(c.req.url).pathname)
    if (rel === null)
      throw new ApiError(400, 'invalid_path', 'invalid path: path has malformed percent-encoding', [
        { path: 'path', message: 'has malformed percent-encoding' },
      ])
    const artifact = (await store.artifacts(row.id)).find((a) => a.path === rel)
    if (!artifact) throw new ApiError(404, 'not_found', `job ${row.id} has no artifact at that path`)
    const unsatisfiable = () =>
      c.json(
        {
          error: {
            code: 'range_not_satisfiable',
            message: `the Range header asks for no byte of this ${artifact.size}-byte file`,
          },
        },
        416,
        { 'content-range': `bytes */${artifact.size}` },
      )
    const range = byteRange(c.req.header('range'), artifact.size)
    if (range.kind === 'unsatisfiable') return unsatisfiable()
    let obj: GetObjectCommandOutput
    try {
      obj = await s3.send(
        new GetObjectCommand({
          Bucket: config.s3.bucket,
          Key: artifact.key,
          // The range as parsed here, never the client's text: every backend then answers the same.
          Range: range.kind === 'partial' ? `bytes=${range.start}-${range.end}` : undefined,
        }),
      )
    } catch (err) {
      const name = (err as Error).name
      if (name === 'NoSuchKey' || name === 'NotFound')
        throw new ApiError(404, 'not_found', `job ${row.id} has no stored file at that path`)
      // The object is shorter than its row says (it should not be): answer as for any range past the end.
      if (name === 'InvalidRange') return unsatisfiable()
      throw err
    }
    const headers: Record<string, string> = {
      'content-type': artifact.contentType,
      'accept-ranges': 'bytes',
      'content-disposition': attachmentDisposition(rel.split('/').pop() ?? ''),
      'x-checksum-sha256': artifact.sha256,
    }
    if (obj.ContentLength !== undefined) headers['content-length'] = String(obj.ContentLength)
    if (obj.ContentRange) headers['content-range'] = obj.ContentRange
    const bodyStream = obj.Body?.transformToWebStream() as ReadableStream | undefined
    return bodyStream ? c.body(bodyStream, obj.ContentRange ? 206 : 200, headers) : c.body(null, 200, headers)
  })

  app.get('/api/jobs/:jobId/events', async (c) =>
    sseEvents(c, await visibleJob(c.req.param('jobId'), c.get('owner')), c.get('owner'), deps),
  )

  return { app, store, statusBody }
}
