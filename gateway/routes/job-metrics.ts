/**
 * `GET /api/jobs/:jobId/metrics`: the numbers a job reported with its progress (a trainer's loss), every
 * point `job_metrics` keeps, so a chart can be drawn after the replay log is gone; live points come with
 * the job's progress events.
 */
import { Hono } from 'hono'
import type { JobMetricsBody } from '../../schema/api.ts'
import type { Db } from '../../schema/db/connect.ts'
import { readMetricPoints } from '../../schema/db/events.ts'
import { onBackend } from '../errors.ts'
import type { JobAccess } from './access.ts'

/** @example app.route('/', jobMetricRoutes({ db: database.db, access })) */
export function jobMetricRoutes({ db, access }: { db: Db; access: JobAccess }): Hono {
  const app = new Hono()
  app.get('/api/jobs/:jobId/metrics', async (c) => {
    const row = await access.visibleJob(c.req.param('jobId'), c.get('owner'))
    const points = await onBackend('Postgres', () => readMetricPoints(db, row.id))
    const body: JobMetricsBody = {
      jobId: row.id,
      points: points.map((p) => ({
        seq: p.seq,
        attempt: p.attempt,
        progress: p.progress,
        at: p.at.toISOString(),
        metrics: p.metrics,
      })),
    }
    return c.json(body)
  })
  return app
}
