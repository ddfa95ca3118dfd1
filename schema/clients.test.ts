import { createServer } from 'node:net'
import { Redis } from 'ioredis'
import postgres from 'postgres'
import { describe, expect, it } from 'vitest'
import { TEST_DATABASE_URL, TEST_REDIS_URL } from '../tests/helpers/stores.ts'
import { isConnectionError, isRedisConnectionError, isUnsentRedisCommand } from './clients.ts'

/** A local port nothing listens on: connections to it are refused. */
async function closedPort(): Promise<number> {
  const server = createServer()
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const { port } = server.address() as { port: number }
  await new Promise((resolve) => server.close(resolve))
  return port
}

const failure = async (fn: () => Promise<unknown>): Promise<unknown> => {
  try {
    await fn()
  } catch (err) {
    return err
  }
  throw new Error('expected a failure')
}

// The libraries' real errors, not look-alikes: a classifier that drifts from them fails here.
describe('isConnectionError', () => {
  it("knows ioredis' refusal of an unsent command, and nothing else as unsent", async () => {
    const redis = new Redis(await closedPort(), {
      lazyConnect: true,
      enableOfflineQueue: false,
      retryStrategy: () => null,
    })
    redis.on('error', () => {})
    const err = await failure(() => redis.get('k'))
    expect(isUnsentRedisCommand(err)).toBe(true)
    expect(isRedisConnectionError(err)).toBe(true)
    expect(isConnectionError(err)).toBe(true)
    expect(isUnsentRedisCommand(new Error('Connection is closed.'))).toBe(false)
    redis.disconnect()
  })

  it("knows ioredis' MaxRetriesPerRequestError, closed connection and command timeout", async () => {
    const refused = new Redis(await closedPort(), { maxRetriesPerRequest: 0, retryStrategy: () => 10 })
    refused.on('error', () => {})
    const maxRetries = await failure(() => refused.get('k'))
    refused.disconnect()
    expect((maxRetries as Error).name).toBe('MaxRetriesPerRequestError')

    const closed = new Redis(TEST_REDIS_URL, { lazyConnect: true })
    await closed.connect()
    closed.disconnect()
    const closedErr = await failure(() => closed.get('k'))

    const slow = new Redis(TEST_REDIS_URL, { commandTimeout: 50 })
    const timedOut = await failure(() => slow.blpop(`clients-test-${process.pid}`, 1))
    slow.disconnect()

    for (const err of [maxRetries, closedErr, timedOut]) {
      expect(isRedisConnectionError(err), String(err)).toBe(true)
      expect(isConnectionError(err), String(err)).toBe(true)
      expect(isUnsentRedisCommand(err), String(err)).toBe(false)
    }
  })

  it("knows postgres.js' refused connection by its code, and a bad query is no connection error", async () => {
    const down = postgres({ host: '127.0.0.1', port: await closedPort(), max: 1, connect_timeout: 2 })
    const refused = await failure(() => down`select 1`)
    await down.end()
    expect(isConnectionError(refused)).toBe(true)
    expect(isRedisConnectionError(refused)).toBe(false)

    const sql = postgres(TEST_DATABASE_URL, { max: 1 })
    const bad = await failure(() => sql`select * from no_such_table_here`)
    await sql.end()
    expect(isConnectionError(bad)).toBe(false)
    expect(isConnectionError(new TypeError('x is undefined'))).toBe(false)
  })
})
