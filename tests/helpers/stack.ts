import { randomUUID } from 'node:crypto'
import { readFile, rm } from 'node:fs/promises'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { fileURLToPath } from 'node:url'
import { ListObjectsV2Command } from '@aws-sdk/client-s3'
import { Queue } from 'bullmq'
import { asc, eq } from 'drizzle-orm'
import type { Redis } from 'ioredis'
import pino from 'pino'
import { type Gateway, startGateway } from '../../gateway/server.ts'
import { GpuHost } from '../../gpu-host/host.ts'
import { groupMembers } from '../../gpu-host/process-group.ts'
import type { ReconcilerOptions } from '../../gpu-host/reconciler.ts'
import type { JobStatusBody } from '../../schema/api.ts'
import { createRedis, createS3Client } from '../../schema/clients.ts'
import type { JobStatus } from '../../schema/common.ts'
import { type Config, loadConfig } from '../../schema/config.ts'
import { type Database, openDatabase } from '../../schema/db/connect.ts'
import { jobAttempts, jobs } from '../../schema/db/tables.ts'
import { QUEUE_NAME } from '../../schema/keys.ts'
import type { JobType } from '../../schema/params/index.ts'
import { makeDataDir, type S3Server, startS3, TEST_DATABASE_URL, TEST_REDIS_URL } from './stores.ts'

// The stores' helpers, for the tests that import everything from here.
export {
  isolatedDatabase,
  makeDataDir,
  type S3Server,
  startS3,
  TEST_DATABASE_URL,
  TEST_REDIS_URL,
} from './stores.ts'

export interface Stack {
  config: Config
  /** The environment `config` was read from (startHost starts more hosts from it). */
  env: Record<string, string>
  prefix: string
  gateway: Gateway
  host: GpuHost
  hostPort: number
  database: Database
  s3: S3Server
  redis: Redis
  queue: Queue
  dataDir: string
  url: (p: string) => string
  /** The job's status body (`GET /api/status/:jobId`); throws unless it answers 200. */
  job(jobId: string): Promise<JobStatusBody>
  /** Waits until the job's status body passes `accept` (a throw counts as "not yet"), and returns it. */
  waitJob(
    jobId: string,
    accept: (job: JobStatusBody) => boolean,
    timeoutMs: number,
    what: string,
  ): Promise<JobStatusBody>
  /** Waits until the job has one of `statuses` (default: a terminal one), by the gateway's status route. */
  waitStatus(jobId: string, statuses?: string[], timeoutMs?: number): Promise<JobStatusBody>
  /** Every attempt row of a job, oldest first. */
  attempts(jobId: string): Promise<(typeof jobAttempts.$inferSelect)[]>
  /** Keys under a job's prefix in the stack's bucket. */
  keysUnder(prefix: string): Promise<string[]>
  /** `POST /api/train` with `body`. */
  post(body: unknown): Promise<{ status: number; json: Record<string, unknown> }>
  /** A train_lora job row written straight to the database (no queued job, no event), owned by `owner`. */
  insertJob(jobId: string, status: JobStatus, owner?: string): Promise<void>
  close(): Promise<void>
}

/** The statuses a job ends in. */
export const TERMINAL: string[] = ['completed', 'failed', 'cancelled']

export const quietLogger = () => pino({ level: process.env.TEST_LOG_LEVEL ?? 'silent' })

/**
 * A whole system on real Redis, Postgres and s3rver: gateway and GPU host in this process, a unique
 * queue prefix and bucket, and free ports.
 */
/** A job's attempt rows, first attempt first. */
export const attemptsOf = (database: Database, jobId: string) =>
  database.db.select().from(jobAttempts).where(eq(jobAttempts.jobId, jobId)).orderBy(asc(jobAttempts.attempt))

export async function startStack(
  opts: {
    env?: Record<string, string>
    handlerModules?: Partial<Record<JobType, string>>
    withHost?: boolean
    database?: Database
    redisUrl?: string
    databaseUrl?: string
    /** Keep this s3rver (tests that stop and restart S3 pass their own). */
    s3?: S3Server
    /**
     * The host's reconciler (default: off, since test stacks share one database across queue prefixes and
     * each would take the others' rows for lost); tests of lost jobs give it a database of their own.
     */
    reconciler?: ReconcilerOptions
    /** The host's re-checks of jobs for an engine it lacks (GpuHostOptions.engineWait). */
    engineWait?: { baseMs: number; maxMs: number }
    /** How often the host beats for `GET /api/hosts` (GpuHostOptions.heartbeatMs). */
    heartbeatMs?: number
    /** The service log of the gateway and the host (default: silent, or TEST_LOG_LEVEL). */
    logger?: pino.Logger
  } = {},
): Promise<Stack> {
  const redisUrl = opts.redisUrl ?? TEST_REDIS_URL
  const databaseUrl = opts.databaseUrl ?? TEST_DATABASE_URL
  const prefix = `test-${randomUUID().slice(0, 8)}`
  const dataDir = await makeDataDir()
  const s3 = opts.s3 ?? (await startS3())
  const env: Record<string, string> = {
    REDIS_URL: redisUrl,
    DATABASE_URL: databaseUrl,
    S3_ENDPOINT: s3.endpoint,
    S3_BUCKET: `b-${prefix}`,
    DATA_DIR: dataDir,
    MODELS_DIR: path.join(dataDir, 'models'),
    GATEWAY_PORT: '0',
    METRICS_PORT: '0',
    SIMULATE_STEP_MS: '5',
    KILL_GRACE_SEC: '1',
    SHUTDOWN_GRACE_SEC: '2',
    RETRY_BACKOFF_MS: '100',
    QUEUE_PREFIX: prefix,
    HOST_ID: `${prefix}-host`,
    ...opts.env,
  }
  const config = loadConfig(env)
  const database = opts.database ?? (await openDatabase({ url: databaseUrl, poolSize: 5 }))
  const logger = opts.logger ?? quietLogger()
  const s3client = createS3Client({ ...config.s3, endpoint: s3.endpoint })
  const host = new GpuHost({
    config,
    database,
    s3: { client: s3client, endpoint: s3.endpoint },
    logger,
    handlerModules: opts.handlerModules,
    reconciler: opts.reconciler ?? { enabled: false },
    engineWait: opts.engineWait,
    heartbeatMs: opts.heartbeatMs,
  })
  if (opts.withHost !== false) await host.start()
  else
    await s3client.send(
      new (await import('@aws-sdk/client-s3')).CreateBucketCommand({ Bucket: config.s3.bucket }),
    )
  const gateway = await startGateway({ config, database, s3: s3client, logger })
  const redis = createRedis(redisUrl)
  redis.on('error', () => {})
  await redis.connect()
  const queueConnection = createRedis(redisUrl)
  queueConnection.on('error', () => {})
  const queue = new Queue(QUEUE_NAME, { connection: queueConnection, prefix })
  const stack: Stack = {
    config,
    env,
    prefix,
    gateway,
    host,
    hostPort: host.port,
    database,
    s3,
    redis,
    queue,
    dataDir,
    url: (p) => `${gateway.url}${p}`,
    job: async (jobId) => {
      const res = await fetch(stack.url(`/api/status/${jobId}`))
      if (res.status !== 200) throw new Error(`status ${res.status} for ${jobId}`)
      return (await res.json()) as JobStatusBody
    },
    waitJob: (jobId, accept, timeoutMs, what) =>
      waitFor(
        async () => {
          const job = await stack.job(jobId)
          return accept(job) ? job : null
        },
        timeoutMs,
        what,
      ),
    waitStatus: async (jobId, statuses = TERMINAL, timeoutMs = 30_000) => {
      // What the job last looked like, so a timeout says where it stopped (not only that it did).
      let last: JobStatusBody | undefined
      try {
        return await waitFor(
          async () => {
            const res = await fetch(stack.url(`/api/status/${jobId}`)).catch(() => null)
            if (res?.status !== 200) return null
            last = (await res.json()) as JobStatusBody
            return statuses.includes(last.status) ? last : null
          },
          timeoutMs,
          `job ${jobId} to be ${statuses.join('|')}`,
        )
      } catch (err) {
        const seen = last
          ? `; it was ${last.status}, attempt ${last.attempt}: ${JSON.stringify(last.message)}`
          : '; its status never answered'
        throw new Error(`${(err as Error).message}${seen}`)
      }
    },
    attempts: (jobId) => attemptsOf(database, jobId),
    keysUnder: async (prefix) => {
      const listed = await s3.client.send(
        new ListObjectsV2Command({ Bucket: config.s3.bucket, Prefix: `${prefix}/` }),
      )
      return (listed.Contents ?? []).map((o) => o.Key ?? '').sort()
    },
    post: async (body) => {
      const res = await fetch(stack.url('/api/train'), {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify(body),
      })
      return { status: res.status, json: (await res.json()) as Record<string, unknown> }
    },
    insertJob: async (jobId, status, owner) => {
      await database.db
        .insert(jobs)
        .values({ id: jobId, type: 'train_lora', status, params: {}, owner, outputPrefix: `loras/${jobId}` })
    },
    close: async () => {
      await gateway.close()
      if (opts.withHost !== false) await host.close()
      await queue.obliterate({ force: true }).catch(() => {})
      await queue.close()
      redis.disconnect()
      if (!opts.database) await database.close()
      s3client.destroy()
      if (!opts.s3) await s3.close()
      await rm(dataDir, { recursive: true, force: true })
    },
  }
  return stack
}

/** A train_lora job's terminal `completed` event (attempt 1, "done"), for emitEvent in tests. */
export const completedEvent = (jobId: string) => ({
  jobId,
  type: 'train_lora' as const,
  status: 'completed' as const,
  progress: 100,
  message: 'done',
  attempt: 1,
  timestamp: new Date().toISOString(),
})

/** Polls `fn` until it returns something truthy; a throw counts as "not yet" (a row not written yet). */
export async function waitFor<T>(
  fn: () => Promise<T | undefined | null | false>,
  timeoutMs = 30_000,
  what = 'condition',
): Promise<T> {
  const deadline = Date.now() + timeoutMs
  let lastError: unknown
  for (;;) {
    try {
      const value = await fn()
      if (value) return value
    } catch (err) {
      lastError = err
    }
    if (Date.now() > deadline)
      throw new Error(
        `timed out waiting for ${what}${lastError ? ` (last error: ${(lastError as Error).message})` : ''}`,
      )
    await sleep(50)
  }
}

/** The fixture dispatcher: map `train_lora` to it and pick a failure mode with `params.mode`. */
export const FIXTURE_DISPATCH = fileURLToPath(new URL('../fixtures/handlers/dispatch.ts', import.meta.url))

/** True when no live process of group `pgid` is left, read from /proc. */
export async function groupGone(pgid: number): Promise<boolean> {
  const members = await groupMembers(pgid)
  return members !== null && members.length === 0
}

/** A process that is gone or a zombie, read from /proc (never kill(pid, 0), which calls a zombie alive). */
export async function processGone(pid: number): Promise<boolean> {
  const stat = await readFile(`/proc/${pid}/stat`, 'utf8').catch(() => null)
  if (stat === null) return true
  const state = stat.slice(stat.lastIndexOf(')') + 2).split(' ')[0]
  return state === 'Z' || state === 'X'
}

/** Adds a fixture job straight to the queue (its params are the fixture's, which the gateway would refuse). */
export async function addFixtureJob(
  stack: Stack,
  mode: string,
  options: { timeoutSec?: number; maxAttempts?: number } = {},
  params: Record<string, unknown> = {},
): Promise<string> {
  const jobId = `fx-${mode}-${randomUUID().slice(0, 8)}`
  await stack.queue.add(
    'train_lora',
    { jobId, type: 'train_lora', params: { mode, ...params }, ...options },
    { jobId },
  )
  return jobId
}

/**
 * One more GPU host on the stack's Redis, queue prefix, database and bucket (its own HOST_ID and
 * metrics port), configured by the stack's environment with `env` over it; the caller closes it.
 */
export async function startHost(
  stack: Stack,
  opts: {
    env?: Record<string, string>
    handlerModules?: Partial<Record<JobType, string>>
    engineWait?: { baseMs: number; maxMs: number }
    heartbeatMs?: number
  } = {},
): Promise<GpuHost> {
  const config = loadConfig({
    ...stack.env,
    HOST_ID: `${stack.prefix}-host-${randomUUID().slice(0, 4)}`,
    METRICS_PORT: '0',
    ...opts.env,
  })
  const host = new GpuHost({
    config,
    database: stack.database,
    s3: {
      client: createS3Client({ ...config.s3, endpoint: stack.s3.endpoint }),
      endpoint: stack.s3.endpoint,
    },
    logger: quietLogger(),
    handlerModules: opts.handlerModules,
    engineWait: opts.engineWait,
    heartbeatMs: opts.heartbeatMs,
    reconciler: { enabled: false },
  })
  await host.start()
  return host
}
