/**
 * `GET /api/hosts`: every GPU host that heartbeats on this gateway's queue prefix, read from Redis and
 * checked against schema/hosts.ts, each `up`, `draining` or `gone` (missed beats) until its key expires.
 */
import { inArray } from 'drizzle-orm'
import { Hono } from 'hono'
import type { Redis } from 'ioredis'
import * as v from 'valibot'
import type { Db } from '../../schema/db/connect.ts'
import { jobs } from '../../schema/db/tables.ts'
import { type HostEntry, HostHeartbeat, hostStatus } from '../../schema/hosts.ts'
import { hostKey, hostsKey } from '../../schema/keys.ts'
import { onBackend } from '../errors.ts'
import type { JobAccess } from './access.ts'

/**
 * The hosts whose keys are still there, by id, as the gateway sees them at `now`. A key that does not
 * parse (a host of another version) is left out rather than failing the list.
 *
 * @example const hosts = await readHosts(redis, config.queuePrefix, Date.now())
 */
export async function readHosts(redis: Redis, queuePrefix: string, now: number): Promise<HostEntry[]> {
  const ids = await redis.zrangebyscore(hostsKey(queuePrefix), now, '+inf')
  if (ids.length === 0) return []
  const values = await redis.mget(...ids.map((id) => hostKey(queuePrefix, id)))
  const hosts: HostEntry[] = []
  for (const value of values) {
    if (value === null) continue
    let parsed: unknown
    try {
      parsed = JSON.parse(value)
    } catch {
      continue
    }
    const beat = v.safeParse(HostHeartbeat, parsed)
    if (!beat.success) continue
    const lastSeenSec = Math.max(0, (now - Date.parse(beat.output.lastSeen)) / 1000)
    hosts.push({ ...beat.output, status: hostStatus(beat.output, now), lastSeenSec })
  }
  return hosts.sort((a, b) => a.hostId.localeCompare(b.hostId))
}

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
    // Hosts are the fleet's, visible to every token; a running job's id only to its owner.
    const ids = [...new Set(hosts.flatMap((h) => h.jobs.flatMap((j) => (j.jobId ? [j.jobId] : []))))]
    const rows =
      ids.length === 0
        ? []
        : await onBackend('Postgres', () =>
            db.select({ id: jobs.id, owner: jobs.owner }).from(jobs).where(inArray(jobs.id, ids)),
          )
    const byId = new Map(rows.map((r) => [r.id, r]))
    const owner = c.get('owner')
    for (const host of hosts)
      for (const job of host.jobs)
        if (job.jobId !== null && !access.canSee(byId.get(job.jobId), owner)) job.jobId = null
    return c.json({ hosts })
  })
  return app
}
