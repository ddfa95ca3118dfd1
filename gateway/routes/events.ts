/** `GET /api/jobs/:jobId/events`: a job's Server-Sent Events (the stream itself is gateway/sse.ts). */
import { Hono } from 'hono'
import type { Redis } from 'ioredis'
import { onBackend } from '../errors.ts'
import { type SseDeps, sseEvents } from '../sse.ts'
import type { JobAccess } from './access.ts'

/** @example app.route('/', eventRoutes({ redis, access, config, hub, metrics, streams })) */
export function eventRoutes(deps: SseDeps & { redis: Redis; access: JobAccess }): Hono {
  const { redis, access } = deps
  const app = new Hono()
  // A stream cannot turn into a 503 once it has started: check that Redis answers before opening one.
  app.use('/api/jobs/:jobId/events', async function redisBeforeStream(_c, next) {
    await onBackend('Redis', () => redis.ping(), 'no live events now; retry shortly')
    return next()
  })
  app.get('/api/jobs/:jobId/events', async (c) =>
    sseEvents(c, await access.visibleJob(c.req.param('jobId'), c.get('owner')), c.get('owner'), deps),
  )
  return app
}
