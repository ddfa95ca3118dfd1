import { S3Client } from '@aws-sdk/client-s3'
import { Redis, type RedisOptions } from 'ioredis'
import type { Config } from './config.ts'

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
    retryStrategy: (times) => Math.min(100 * 2 ** times, 2000),
    lazyConnect: true,
    ...opts,
  })

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
