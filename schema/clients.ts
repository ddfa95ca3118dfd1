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
  // Postgres: admin shutdown, cannot connect now, connection failure / does not exist.
  '57P01',
  '57P03',
  '08006',
  '08001',
  '08003',
])

/**
 * A failure to reach Redis, Postgres or S3 (down, restarting, unreachable), as opposed to a bad query or
 * request: worth a retry, or a 503.
 */
export function isConnectionError(err: unknown): boolean {
  const e = err as { code?: string; message?: string; cause?: { code?: string } } | undefined
  const code = e?.code ?? e?.cause?.code ?? ''
  return (
    CONNECTION_CODES.has(code) ||
    /Connection is closed|connect ECONNREFUSED|Stream isn't writeable|MaxRetriesPerRequest|Command timed out|ETIMEDOUT|terminat/.test(
      e?.message ?? '',
    )
  )
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
