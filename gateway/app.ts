/**
 * The gateway's Hono app, composed: the cross-cutting middleware in order, then the routes by resource
 * (gateway/routes/), the console and the WebSocket. Built from its stores and backends, so a test can
 * build it and call `app.request()`.
 */
import type { S3Client } from '@aws-sdk/client-s3'
import type { Queue } from 'bullmq'
import { Hono } from 'hono'
import type { Redis } from 'ioredis'
import type { Logger } from 'pino'
import type { Config } from '../schema/config.ts'
import type { Database } from '../schema/db/connect.ts'
import type { JobRow } from '../schema/db/tables.ts'
import type { ProgressEvent } from '../schema/events.ts'
import { consoleApp } from './console/index.ts'
import type { EventHub } from './hub.ts'
import type { GatewayMetrics } from './metrics.ts'
import { auth } from './middleware/auth.ts'
import { errorHandler, unmatched } from './middleware/errors.ts'
import { originGuard, originPolicy } from './middleware/origin.ts'
import {
  AUTH_FAILURE_BURST,
  AUTH_FAILURES_PER_SEC,
  authFailureLimit,
  rateLimit,
} from './middleware/rate-limit.ts'
import { requestMetrics } from './middleware/request-metrics.ts'
import { RateLimiter, type StreamCounter } from './rate-limit.ts'
import { jobAccess } from './routes/access.ts'
import { actionRoutes } from './routes/actions.ts'
import { artifactRoutes } from './routes/artifacts.ts'
import { batchRoutes } from './routes/batch.ts'
import { eventRoutes } from './routes/events.ts'
import { healthRoutes } from './routes/health.ts'
import { hostRoutes } from './routes/hosts.ts'
import { jobMetricRoutes } from './routes/job-metrics.ts'
import { jobRoutes } from './routes/jobs.ts'
import { isFollow, logRoutes } from './routes/logs.ts'
import { queueRoutes } from './routes/queue.ts'
import { statusBodies, statusRoutes } from './routes/status.ts'
import { jobSubmitter } from './routes/submit.ts'
import type { JobStore } from './store.ts'
import { type WebSockets, WS_PATH, type WsLimits, webSockets } from './ws.ts'

/** Routes that need no API token. */
const PUBLIC_PATHS = new Set(['/healthz', '/readyz', '/', '/openapi.json'])
/** Routes that answer probes and scrapers, which call by IP: no Host/Origin rule (they carry no job data). */
const PROBE_PATHS = new Set(['/healthz', '/readyz', '/metrics'])
/** The SSE route: with the WebSocket, the only place `?token=` is accepted (EventSource sends no header). */
const SSE_PATH = /^\/api\/jobs\/[^/]+\/events$/
/** The logs route: its `?follow=1` variant is SSE too (and only that variant takes `?token=`). */
const LOGS_PATH = /^\/api\/jobs\/[^/]+\/logs$/

export interface GatewayDeps {
  config: Config
  /** The job rows (Postgres or PGlite). */
  store: JobStore
  /** For readiness only: the store reads and writes through it. */
  database: Database
  /** Commands (fail fast: schema/clients.ts FAIL_FAST_REDIS). */
  redis: Redis
  queue: Queue
  s3: S3Client
  hub: EventHub
  metrics: GatewayMetrics
  logger: Logger
  /** Open WebSockets and SSE streams per token (one count for both). */
  streams: StreamCounter
  /** The WebSocket's per-socket limits (tests make them small). */
  wsLimits?: Partial<WsLimits>
}

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
 * The gateway's app: REST API, SSE, health, metrics, console and `GET /ws` (whose sockets start once
 * `websockets.attach(server)` is called).
 *
 * @example const { app, websockets } = createApp(deps); websockets.attach(serve({ fetch: app.fetch }))
 */
export function createApp(deps: GatewayDeps): { app: Hono; websockets: WebSockets } {
  const { config, store, redis, hub, metrics, logger } = deps
  const authRequired = config.apiTokens.size > 0
  const app = new Hono()
  app.onError(errorHandler({ logger }))
  app.notFound(unmatched(app))

  // The cross-cutting rules, in order: cross-site refusal, wrong-token throttle (before auth, per client
  // address), auth, then the per-token request rate. WebSocket upgrades pass through the same ones.
  app.use(requestMetrics({ metrics, logger }))
  app.use(originGuard({ policy: originPolicy(config), exempt: (p) => PROBE_PATHS.has(p) }))
  app.use(
    authFailureLimit({
      // Per client address; WebSocket upgrades pass through here too, so both count toward one limit.
      limiter: new RateLimiter(AUTH_FAILURES_PER_SEC, AUTH_FAILURE_BURST),
      onLimited: () => metrics.rateLimited.inc(),
    }),
  )
  app.use(
    auth({
      tokens: config.apiTokens,
      metricsToken: config.metricsToken,
      // The console's page and assets carry no data: the API calls it makes are authorised like any other.
      isPublic: (p) => PUBLIC_PATHS.has(p) || p.startsWith('/console/'),
      acceptsQueryToken: (p, query) =>
        p === WS_PATH || SSE_PATH.test(p) || (LOGS_PATH.test(p) && isFollow(query('follow'))),
    }),
  )
  app.use(
    rateLimit({
      limiter: new RateLimiter(config.rateLimitRps),
      // A socket's messages have their own per-socket limit (gateway/ws.ts); its upgrade costs nothing here.
      key: (c) => (c.req.path === WS_PATH ? null : c.get('owner')),
      describe: `over ${config.rateLimitRps} requests per second`,
      onLimited: () => metrics.rateLimited.inc(),
    }),
  )

  const access = jobAccess({ store, authRequired })
  const bodies = statusBodies({ store, redis, hub })
  const bucket = config.s3.bucket
  app.route('/', healthRoutes({ redis, database: deps.database, s3: deps.s3, bucket, metrics, logger }))
  app.route('/', consoleApp)
  const submitter = jobSubmitter(deps)
  app.route('/', batchRoutes({ config, submitter }))
  app.route('/', jobRoutes({ ...deps, access, submitter, onChanged: bodies.forget }))
  app.route('/', actionRoutes({ ...deps, access, submitter, onChanged: bodies.forget }))
  app.route('/', statusRoutes({ bodies, access }))
  app.route('/', eventRoutes({ ...deps, access }))
  app.route('/', artifactRoutes({ store, access, s3: deps.s3, bucket }))
  const { db } = deps.database
  app.route('/', hostRoutes({ redis, db, queuePrefix: config.queuePrefix, access, authRequired }))
  app.route('/', queueRoutes({ queue: deps.queue, db, authRequired }))
  app.route('/', logRoutes({ ...deps, db: deps.database.db, access }))
  app.route('/', jobMetricRoutes({ db, access }))
  const websockets = webSockets({
    app,
    hub,
    store,
    metrics,
    logger,
    authRequired,
    streams: deps.streams,
    maxStreamsPerToken: config.maxStreamsPerToken,
    limits: deps.wsLimits,
  })
  return { app, websockets }
}
