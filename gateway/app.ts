import { randomUUID } from 'node:crypto'
import { GetObjectCommand, type S3Client } from '@aws-sdk/client-s3'
import type { Queue } from 'bullmq'
import { Hono } from 'hono'
import { bodyLimit } from 'hono/body-limit'
import type { Redis } from 'ioredis'
import type { Logger } from 'pino'
import * as v from 'valibot'
import { type Artifact, type JobStatusBody, SubmitJobBody, type SubmitJobResponse } from '../schema/api.ts'
import { checkBackends } from '../schema/clients.ts'
import { isTerminal, JobId, JobStatus } from '../schema/common.ts'
import type { Config } from '../schema/config.ts'
import { DatasetPathError, resolveDatasetPath } from '../schema/dataset-path.ts'
import type { Database } from '../schema/db/connect.ts'
import type { JobArtifactRow, JobRow } from '../schema/db/tables.ts'
import type { JobEnvelope } from '../schema/envelope.ts'
import type { ProgressEvent } from '../schema/events.ts'
import { toFieldIssues } from '../schema/issues.ts'
import { CANCEL_CHANNEL, cancelKey } from '../schema/keys.ts'
import { JobType, outputPrefixFor, PARAMS_BY_TYPE, TYPE_DEFAULTS } from '../schema/params/index.ts'
import { emitEvent, lastEvent } from '../schema/progress-log.ts'
import { presentedToken, tokenOwner } from './auth.ts'
import { consoleApp } from './console/index.ts'
import { ApiError, isBackendDown } from './errors.ts'
import type { EventHub } from './hub.ts'
import type { GatewayMetrics } from './metrics.ts'
import { openApiDocument } from './openapi.ts'
import { RateLimiter, type StreamCounter } from './rate-limit.ts'
import { sseEvents } from './sse.ts'
import { JobStore } from './store.ts'

export const MAX_BODY_BYTES = 1024 * 1024
/** Longest a cached status body is served when no event of its job arrives (see `cachedStatus`). */
const STATUS_CACHE_MS = 1000
/** Routes that need no API token. */
const PUBLIC_PATHS = new Set(['/healthz', '/metrics', '/', '/openapi.json'])

export interface GatewayDeps {
  config: Config
  database: Database
  redis: Redis
  queue: Queue
  s3: S3Client
  hub: EventHub
  metrics: GatewayMetrics
  logger: Logger
  /** Open WebSockets and SSE streams per token (shared with the WebSocket server). */
  streams: StreamCounter
}

type Env = { Variables: { owner: string | null } }

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

/** The Hono app of the gateway: REST API, SSE, health and metrics (WebSocket is attached in server.ts). */
export function createApp(deps: GatewayDeps): {
  app: Hono<Env>
  store: JobStore
  statusBody: (row: JobRow) => Promise<JobStatusBody>
} {
  const { config, redis, queue, s3, hub, metrics, logger } = deps
  const store = new JobStore(deps.database.db)
  const app = new Hono<Env>()
  const authRequired = config.apiTokens.size > 0
  const limiter = new RateLimiter(config.rateLimitRps)

  app.onError((err, c) => {
    if (err instanceof ApiError) return c.json(err.toJSON(), err.status)
    if (isBackendDown(err)) {
      logger.warn({ err: (err as Error).message, path: c.req.path }, 'backing service unavailable')
      return c.json(
        new ApiError(
          503,
          'unavailable',
          'a backing service (Redis, Postgres or S3) is unavailable; retry shortly',
        ).toJSON(),
        503,
      )
    }
    logger.error({ err, path: c.req.path }, 'unhandled error')
    return c.json({ error: { code: 'internal', message: 'internal error' } }, 500)
  })
  app.notFound((c) =>
    c.json(new ApiError(404, 'not_found', `no route ${c.req.method} ${c.req.path}`).toJSON(), 404),
  )

  app.use(async function requestMetrics(c, next) {
    const start = performance.now()
    await next()
    const route = c.req.routePath || 'unmatched'
    metrics.httpDuration.observe(
      { method: c.req.method, route, status: String(c.res.status) },
      (performance.now() - start) / 1000,
    )
  })

  app.get('/healthz', (c) => c.json({ ok: true }))
  // The console's page and assets carry no data: the API calls it makes are authorised like any other.
  app.route('/', consoleApp)
  app.get('/metrics', async (c) => {
    if (
      config.metricsToken &&
      tokenOwner(
        new Map([['metrics', config.metricsToken]]),
        presentedToken(c.req.header('authorization'), undefined),
      ) === null
    )
      throw new ApiError(401, 'unauthorized', 'METRICS_TOKEN is set: send Authorization: Bearer <token>')
    return c.body(await metrics.registry.metrics(), 200, { 'content-type': metrics.registry.contentType })
  })

  app.use('*', async function auth(c, next) {
    c.set('owner', null)
    if (!authRequired || PUBLIC_PATHS.has(c.req.path) || c.req.path.startsWith('/console/')) return next()
    const owner = tokenOwner(
      config.apiTokens,
      presentedToken(c.req.header('authorization'), c.req.query('token')),
    )
    if (owner === null)
      throw new ApiError(
        401,
        'unauthorized',
        'send Authorization: Bearer <token> (or ?token= for WebSocket and SSE)',
      )
    c.set('owner', owner)
    const wait = limiter.take(owner)
    if (wait > 0) {
      metrics.rateLimited.inc()
      return c.json(
        new ApiError(
          429,
          'rate_limited',
          `over ${config.rateLimitRps} requests per second; retry in ${wait} s`,
        ).toJSON(),
        429,
        {
          'retry-after': String(wait),
        },
      )
    }
    return next()
  })

  const openapi = JSON.stringify(openApiDocument())
  app.get('/openapi.json', (c) => c.body(openapi, 200, { 'content-type': 'application/json' }))

  app.get('/readyz', async (c) => {
    const checks = await checkBackends({ redis, database: deps.database, s3, bucket: config.s3.bucket })
    const ok = Object.values(checks).every((x) => x === 'ok')
    return c.json({ ok, checks }, ok ? 200 : 503)
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

  const submit = async (c: import('hono').Context<Env>) => {
    let raw: unknown
    try {
      raw = await c.req.json()
    } catch {
      throw new ApiError(400, 'invalid_json', 'the body must be valid JSON')
    }
    const body = v.safeParse(SubmitJobBody, raw)
    if (!body.success) {
      const issues = toFieldIssues(body.issues)
      throw new ApiError(
        400,
        'invalid_request',
        `invalid request: ${issues[0]?.path} ${issues[0]?.message}`,
        issues,
      )
    }
    const { type, jobId: requestedId, priority, timeoutSec, maxAttempts } = body.output
    const params = v.safeParse(PARAMS_BY_TYPE[type], body.output.params)
    if (!params.success) {
      const issues = toFieldIssues(params.issues, 'params')
      throw new ApiError(
        400,
        'invalid_params',
        `invalid params: ${issues[0]?.path} ${issues[0]?.message}`,
        issues,
      )
    }
    if ('datasetPath' in params.output) {
      try {
        await resolveDatasetPath(config.dataDir, params.output.datasetPath)
      } catch (err) {
        if (!(err instanceof DatasetPathError)) throw err
        const issues = [{ path: 'params.datasetPath', message: err.message }]
        throw new ApiError(400, 'invalid_params', `invalid params: params.datasetPath ${err.message}`, issues)
      }
    }
    const owner = c.get('owner')
    const jobId = requestedId ?? randomUUID()
    const outputPrefix = outputPrefixFor(type, jobId)
    const defaults = TYPE_DEFAULTS[type]
    const urls = {
      statusUrl: `/api/status/${encodeURIComponent(jobId)}`,
      streamUrl: `/ws?jobId=${encodeURIComponent(jobId)}`,
    }
    // Params as the client sent them (validated); the host applies defaults again when it parses them.
    const inserted = await store.insert({
      jobId,
      type,
      params: body.output.params,
      owner,
      priority,
      timeoutSec,
      maxAttempts: maxAttempts ?? defaults.maxAttempts,
      outputPrefix,
    })
    if (!inserted) {
      const existing = await store.get(jobId)
      if (!existing || (authRequired && existing.owner !== owner))
        throw new ApiError(409, 'conflict', `jobId "${jobId}" is already taken`)
      return c.json({ jobId, status: existing.status, ...urls } satisfies SubmitJobResponse, 200)
    }
    const envelope: JobEnvelope = {
      jobId,
      type,
      params: body.output.params,
      artifacts: { outputPrefix },
      owner,
      ...(priority === undefined ? {} : { priority }),
      ...(timeoutSec === undefined ? {} : { timeoutSec }),
      ...(maxAttempts === undefined ? {} : { maxAttempts }),
    }
    try {
      // The queued event first, so that its seq comes before anything a host emits.
      const event = await emitEvent(redis, {
        jobId,
        type,
        status: 'queued',
        progress: 0,
        message: 'queued',
        attempt: 0,
        timestamp: new Date().toISOString(),
      })
      await queue.add(type, envelope, {
        jobId,
        ...(priority === undefined ? {} : { priority }),
        removeOnComplete: { age: 7 * 86_400, count: 10_000 },
        removeOnFail: { age: 30 * 86_400, count: 50_000 },
      })
      void store.progressSeq(jobId, event.seq).catch(() => {})
    } catch (err) {
      // Not queued: no row either, so nothing is left half-submitted.
      await store.remove(jobId).catch(() => {})
      throw err
    }
    metrics.submitted.inc({ type })
    logger.info({ jobId, type, owner }, 'job queued')
    return c.json({ jobId, status: 'queued', ...urls } satisfies SubmitJobResponse, 202)
  }

  const limit = bodyLimit({
    maxSize: MAX_BODY_BYTES,
    // The rest of the body is not read: the connection cannot be reused, so say it closes.
    onError: (c) =>
      c.json(
        new ApiError(413, 'too_large', `the body must be at most ${MAX_BODY_BYTES} bytes`).toJSON(),
        413,
        {
          connection: 'close',
        },
      ),
  })
  app.post('/api/train', limit, submit)
  app.post('/api/jobs', limit, submit)

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
  const status = async (c: import('hono').Context<Env>) => {
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
    return c.json({ jobs: await Promise.all(page.rows.map(statusBody)), nextCursor: page.nextCursor })
  })

  app.post('/api/jobs/:jobId/cancel', async (c) => {
    const row = await visibleJob(c.req.param('jobId'), c.get('owner'))
    if (isTerminal(row.status)) throw new ApiError(409, 'conflict', `job is already ${row.status}`)
    const jobId = row.id
    // Every host learns of it: a host about to start the job refuses, the one running it kills it.
    await redis.set(cancelKey(jobId), '1', 'EX', 7 * 86_400)
    const removed = await queue.remove(jobId).catch(() => 0)
    if (removed === 1 || row.status === 'queued' || row.status === 'retrying') {
      const fresh = await store.get(jobId)
      if (fresh && !isTerminal(fresh.status) && (removed === 1 || fresh.status !== 'running')) {
        const error = { code: 'CANCELLED', reason: 'cancelled' as const, message: 'cancelled by request' }
        // The row first, then the event: whoever sees the event finds the final state stored.
        if (await store.cancel(jobId, error, 'cancelled')) {
          const event = await emitEvent(
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
          )
          await store.progressSeq(jobId, event.seq)
        }
      }
    }
    await redis.publish(CANCEL_CHANNEL, JSON.stringify({ jobId }))
    statusCache.delete(jobId)
    const after = await store.get(jobId)
    return c.json({ jobId, status: after?.status ?? row.status, cancelRequested: true }, 202)
  })

  app.get('/api/jobs/:jobId/artifacts', async (c) => {
    const row = await visibleJob(c.req.param('jobId'), c.get('owner'))
    return c.json({ artifacts: (await store.artifacts(row.id)).map(toArtifact) })
  })

  app.get('/api/jobs/:jobId/artifacts/*', async (c) => {
    const row = await visibleJob(c.req.param('jobId'), c.get('owner'))
    const prefix = `/api/jobs/${encodeURIComponent(row.id)}/artifacts/`
    const rel = decodeURIComponent(new URL(c.req.url).pathname.slice(prefix.length))
    const artifact = (await store.artifacts(row.id)).find((a) => a.path === rel)
    if (!artifact) throw new ApiError(404, 'not_found', `job ${row.id} has no artifact "${rel}"`)
    const range = c.req.header('range')
    const obj = await s3.send(
      new GetObjectCommand({ Bucket: config.s3.bucket, Key: artifact.key, Range: range }),
    )
    const headers: Record<string, string> = {
      'content-type': artifact.contentType,
      'accept-ranges': 'bytes',
      'content-disposition': `attachment; filename="${rel.split('/').pop()?.replace(/"/g, '') ?? 'artifact'}"`,
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
