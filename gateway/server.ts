import type { Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import type { S3Client } from '@aws-sdk/client-s3'
import { serve } from '@hono/node-server'
import { Queue } from 'bullmq'
import type { Logger } from 'pino'
import { createRedis, FAIL_FAST_REDIS } from '../schema/clients.ts'
import type { Config } from '../schema/config.ts'
import type { Database } from '../schema/db/connect.ts'
import { QUEUE_NAME } from '../schema/keys.ts'
import { createApp, rowSnapshot } from './app.ts'
import { EventHub } from './hub.ts'
import { GatewayMetrics } from './metrics.ts'
import { StreamCounter } from './rate-limit.ts'
import { JobStore } from './store.ts'

export interface Gateway {
  port: number
  url: string
  close(): Promise<void>
}

/** Where the gateway listens: loopback without API tokens (anyone who reaches it could run jobs). */
export function gatewayHostname(config: Config): string {
  return config.apiTokens.size === 0 ? '127.0.0.1' : (config.gatewayHost ?? '0.0.0.0')
}

/**
 * Starts the gateway on `config.gatewayPort` (0: any free port). Without API tokens it binds to loopback
 * only, whatever GATEWAY_HOST says, since anyone who can reach it could run and cancel jobs.
 */
export async function startGateway(opts: {
  config: Config
  database: Database
  s3: S3Client
  logger: Logger
}): Promise<Gateway> {
  const { config, database, logger } = opts
  // Requests never wait for Redis: commands and queue adds fail fast when it is down (a 503 at once).
  // The hub's replay reads may wait a little for a reconnect (they are idempotent, and a subscriber's
  // catch-up after a Redis restart must not fail because this connection is a moment behind).
  const redis = createRedis(config.redisUrl, FAIL_FAST_REDIS)
  const queueConnection = createRedis(config.redisUrl, FAIL_FAST_REDIS)
  const reader = createRedis(config.redisUrl, { commandTimeout: FAIL_FAST_REDIS.commandTimeout })
  const subscriber = createRedis(config.redisUrl)
  for (const [name, r] of [
    ['redis', redis],
    ['reader', reader],
    ['subscriber', subscriber],
    ['queue', queueConnection],
  ] as const)
    r.on('error', (err) => logger.warn({ err: err.message, connection: name }, 'redis error'))
  await Promise.all([redis.connect(), reader.connect(), subscriber.connect(), queueConnection.connect()])
  const queue = new Queue(QUEUE_NAME, { connection: queueConnection, prefix: config.queuePrefix })
  queue.on('error', (err) => logger.warn({ err: err.message }, 'queue error'))
  const metrics = new GatewayMetrics()
  const store = new JobStore(database.db)
  const hub = new EventHub(
    subscriber,
    reader,
    async (jobId) => {
      const row = await store.get(jobId)
      return row ? rowSnapshot(row) : null
    },
    (err) => logger.warn({ err }, 'event replay failed'),
  )
  await hub.start()
  const { app, websockets } = createApp({
    config,
    store,
    database,
    redis,
    queue,
    s3: opts.s3,
    hub,
    metrics,
    logger,
    streams: new StreamCounter(config.maxStreamsPerToken),
  })

  const open = config.apiTokens.size === 0
  const hostname = gatewayHostname(config)
  if (open && config.gatewayHost && config.gatewayHost !== '127.0.0.1')
    logger.warn(
      { requested: config.gatewayHost },
      'GATEWAY_HOST ignored: no API_TOKENS set, so the gateway listens on loopback only',
    )
  const server = await new Promise<Server>((resolve, reject) => {
    const s = serve({ fetch: app.fetch, port: config.gatewayPort, hostname }, () => resolve(s as Server))
    ;(s as Server).once('error', reject)
  })
  websockets.attach(server)
  const port = (server.address() as AddressInfo).port
  const url = `http://${hostname}:${port}`
  if (open)
    logger.warn(`no API_TOKENS set: authentication is off and the gateway listens on loopback only (${url})`)
  logger.info({ url }, 'gateway listening')
  return {
    port,
    url,
    close: async () => {
      websockets.close()
      // Ends every SSE stream first: server.close() waits for responses still open, and a stream is one.
      await hub.close()
      await new Promise<void>((resolve) => server.close(() => resolve()))
      server.closeAllConnections()
      await queue.close()
      subscriber.disconnect()
      reader.disconnect()
      await redis.quit().catch(() => redis.disconnect())
    },
  }
}
