import { HeadBucketCommand, S3Client } from '@aws-sdk/client-s3'
import { Redis, type RedisOptions } from 'ioredis'
import { backoffDelay } from './backoff.ts'
import type { Config } from './config.ts'
import type { Database } from './db/connect.ts'

/**
 * An S3 client for MinIO, AWS or the embedded s3rver. Checksums only when required: s3rver corrupts
 * streamed bodies otherwise, and MinIO does not need them.
 */
export const createS3Client = (s3: Config['s3'] & { endpoint: string }): S3Client =>
  new S3Client({
    endpoint: s3.endpoint,
    region: s3.region,
    forcePathStyle: true,
    credentials: { accessKeyId: s3.accessKeyId, secretAccessKey: s3.secretAccessKey },
    requestChecksumCalculation: 'WHEN_REQUIRED',
    responseChecksumValidation: 'WHEN_REQUIRED',
    maxAttempts: 5,
  })

/**
 * A Redis connection that retries for ever (BullMQ needs `maxRetriesPerRequest: null`); connects lazily
 * so that no connection opens at import time.
 */
export const createRedis = (url: string, opts: RedisOptions = {}): Redis =>
  new Redis(url, {
    maxRetriesPerRequest: null,
    enableReadyCheck: true,
    // 200 ms after the first failure, doubling to 2 s.
    retryStrategy: (times) => backoffDelay(times + 1, { baseMs: 100, maxMs: 2000 }),
    lazyConnect: true,
    ...opts,
  })

/**
 * Options for a connection whose commands must fail fast when Redis is down, never wait for it: nothing is
 * queued while disconnected (so a command the caller gave up on is never sent later), nothing unanswered
 * is resent after a reconnect, and a command with no answer within `commandTimeout` fails. The gateway's
 * command and queue connections use it (BullMQ's Queue, unlike its Worker, works with it); a command that
 * timed out may still have run: the caller decides what an unknown outcome means.
 */
export const FAIL_FAST_REDIS: RedisOptions = {
  enableOfflineQueue: false,
  autoResendUnfulfilledCommands: false,
  commandTimeout: 2000,
}

/** Checks that Redis answers within `timeoutMs`; throws a short, clear error otherwise. */
export async function probeRedis(url: string, timeoutMs = 2000): Promise<void> {
  const redis = new Redis(url, {
    lazyConnect: true,
    maxRetriesPerRequest: 0,
    retryStrategy: () => null,
    connectTimeout: timeoutMs,
  })
  redis.on('error', () => {})
  try {
    await redis.connect()
    await redis.ping()
  } finally {
    redis.disconnect()
  }
}

/**
 * Codes that mean "could not reach the service": Node's socket errors (Redis, Postgres, S3 alike; ioredis
 * sets ETIMEDOUT on a connect timeout too), postgres.js' own connection codes, and Postgres' SQLSTATEs for
 * a server going away.
 */
const CONNECTION_CODES = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'ETIMEDOUT',
  'EPIPE',
  'ENOTFOUND',
  'EHOSTUNREACH',
  'CONNECT_TIMEOUT',
  'CONNECTION_CLOSED',
  'CONNECTION_ENDED',
  'CONNECTION_DESTROYED',
  // Postgres: admin shutdown (terminating connection), cannot connect now, connection failure / does not exist.
  '57P01',
  '57P03',
  '08006',
  '08001',
  '08003',
])

/**
 * ioredis' connection failures that are plain `Error`s, with no class, name or code to check (ioredis 6:
 * `CONNECTION_CLOSED_ERROR_MSG`, Command.js' timeout, Redis.js' refusal with the offline queue off), so
 * their message is the only sign. This is the one place that reads ioredis' messages.
 */
const IOREDIS_PLAIN_FAILURES = {
  closed: 'Connection is closed.',
  timedOut: 'Command timed out',
  unsent: "Stream isn't writeable and enableOfflineQueue options is false",
} as const

/** Which of ioredis' plain-`Error` connection failures `err` is, if any. */
function ioredisPlainFailure(err: unknown): keyof typeof IOREDIS_PLAIN_FAILURES | undefined {
  if (!(err instanceof Error)) return undefined
  const kinds = Object.keys(IOREDIS_PLAIN_FAILURES) as (keyof typeof IOREDIS_PLAIN_FAILURES)[]
  return kinds.find((kind) => err.message.startsWith(IOREDIS_PLAIN_FAILURES[kind]))
}

/**
 * Whether ioredis refused a command without sending it (disconnected, and the offline queue is off:
 * FAIL_FAST_REDIS), so Redis never saw it.
 */
export const isUnsentRedisCommand = (err: unknown): boolean => ioredisPlainFailure(err) === 'unsent'

/**
 * A failure of a Redis connection: ioredis' plain ones, or its one typed class, `MaxRetriesPerRequestError`
 * (checked by name: ioredis does not export the class from its entry point).
 */
export const isRedisConnectionError = (err: unknown): boolean =>
  ioredisPlainFailure(err) !== undefined || (err instanceof Error && err.name === 'MaxRetriesPerRequestError')

/**
 * A failure to reach Redis, Postgres or S3 (down, restarting, unreachable), as opposed to a bad query or
 * request: worth a retry, or a 503. By code (its own or its cause's: Drizzle wraps a failed query), else
 * one of ioredis' connection errors.
 */
export function isConnectionError(err: unknown): boolean {
  const e = err as { code?: unknown; cause?: { code?: unknown } } | undefined
  const code = e?.code ?? e?.cause?.code
  return (typeof code === 'string' && CONNECTION_CODES.has(code)) || isRedisConnectionError(err)
}

/** Readiness of the backing services: `ok`, or `down: <why>` for each, each check bounded by `timeoutMs`. */
export async function checkBackends(
  deps: { redis: Redis; database: Pick<Database, 'ping'>; s3: S3Client; bucket: string },
  timeoutMs = 2000,
): Promise<{ redis: string; postgres: string; s3: string }> {
  const check = async (fn: () => Promise<unknown>) => {
    let timer: NodeJS.Timeout | undefined
    try {
      await Promise.race([
        fn(),
        new Promise((_, reject) => {
          timer = setTimeout(() => reject(new Error('timeout')), timeoutMs)
        }),
      ])
      return 'ok'
    } catch (err) {
      return `down: ${(err as Error).message}`
    } finally {
      clearTimeout(timer)
    }
  }
  const [redis, postgres, s3] = await Promise.all([
    check(() => deps.redis.ping()),
    check(() => deps.database.ping()),
    check(() => deps.s3.send(new HeadBucketCommand({ Bucket: deps.bucket }))),
  ])
  return { redis, postgres, s3 }
}
