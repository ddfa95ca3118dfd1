/** The routes for probes, scrapers and tools: `/healthz`, `/readyz`, `/metrics`, `/openapi.json`. */
import type { S3Client } from '@aws-sdk/client-s3'
import { Hono } from 'hono'
import type { Redis } from 'ioredis'
import type { Logger } from 'pino'
import { checkBackends } from '../../schema/clients.ts'
import type { Database } from '../../schema/db/connect.ts'
import type { GatewayMetrics } from '../metrics.ts'
import { openApiDocument } from '../openapi.ts'

export interface HealthDeps {
  redis: Redis
  database: Database
  s3: S3Client
  bucket: string
  metrics: GatewayMetrics
  logger: Logger
}

/** @example app.route('/', healthRoutes({ redis, database, s3, bucket, metrics, logger })) */
export function healthRoutes({ redis, database, s3, bucket, metrics, logger }: HealthDeps): Hono {
  const app = new Hono()
  app.get('/healthz', (c) => c.json({ ok: true }))
  app.get('/metrics', async (c) =>
    c.body(await metrics.registry.metrics(), 200, { 'content-type': metrics.registry.contentType }),
  )
  const openapi = JSON.stringify(openApiDocument())
  app.get('/openapi.json', (c) => c.body(openapi, 200, { 'content-type': 'application/json' }))

  // Public (Kubernetes probes send no token): says which backend is down, not why (that is logged).
  app.get('/readyz', async (c) => {
    const checks = await checkBackends({ redis, database, s3, bucket })
    const down = Object.entries(checks).filter(([, x]) => x !== 'ok')
    if (down.length) logger.warn({ checks }, 'not ready')
    const brief = {
      redis: checks.redis === 'ok' ? 'ok' : 'down',
      postgres: checks.postgres === 'ok' ? 'ok' : 'down',
      s3: checks.s3 === 'ok' ? 'ok' : 'down',
    }
    return c.json({ ok: down.length === 0, checks: brief }, down.length === 0 ? 200 : 503)
  })
  return app
}
