/**
 * `GET /api/hosts`: every GPU host that heartbeats on this gateway's queue prefix, read from Redis and
 * checked against schema/hosts.ts, each `up`, `draining` or `gone` (missed beats) until its key expires.
 */
import { inArray } from 'drizzle-orm'
import { Hono } from 'hono'
import type { Redis } from 'ioredis'
import type { Db } from '../../schema/db/connect.ts'
import { jobs } from '../../schema/db/tables.ts'
import { readHosts } from '../../schema/hosts.ts'
import { onBackend } from '../errors.ts'
import type { JobAccess } from './access.ts'

export interface HostsDeps {
  redis: Redis
  db: Db
  queuePrefix: string
  access: JobAccess
  authRequired: boolean
}

/** @example app.route('/', hostRoutes({ redis, db: database.db, queuePrefix, access, authRequired })) */
export function hostRoutes({ redis, db, queuePrefix, access, authRequired }: HostsDeps): Hono {
  const app = new Hono()
  app.get('/api/hosts', async (c) => {
    const hosts = await onBackend('Redis', () => readHosts(redis, queuePrefix, Date.now()))
    if (!authRequired) return c.json({ hosts })
    // Hosts are the fleet's, visible to every token (their slots say busy, with the memory reserved); a
    // running job only to its owner: another token's is left out, its type and progress as much as its id.
    const ids = [...new Set(hosts.flatMap((h) => h.jobs.map((j) => j.jobId)))]
    const rows =
      ids.length === 0
        ? []
        : await onBackend('Postgres', () =>
            db.select({ id: jobs.id, owner: jobs.owner }).from(jobs).where(inArray(jobs.id, ids)),
          )
    const byId = new Map(rows.map((r) => [r.id, r]))
    const owner = c.get('owner')
    for (const host of hosts) host.jobs = host.jobs.filter((j) => access.canSee(byId.get(j.jobId), owner))
    return c.json({ hosts })
  })
  return app
}
