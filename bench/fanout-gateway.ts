/**
 * Child process of bench/fanout.ts: the real gateway (startGateway, real Postgres and Redis), alone in
 * its process so that its CPU and RSS are measured apart from the load. Answers `stats` and `exit` over IPC.
 */
import pino from 'pino'
import { startGateway } from '../gateway/server.ts'
import { createS3Client } from '../schema/clients.ts'
import { loadConfig } from '../schema/config.ts'
import { openDatabase } from '../schema/db/connect.ts'
import { processStats } from './lib.ts'

const env = (name: string): string => {
  const value = process.env[name]
  if (!value) throw new Error(`${name} is not set`)
  return value
}

const config = loadConfig({
  REDIS_URL: env('BENCH_REDIS_URL'),
  DATABASE_URL: env('BENCH_DATABASE_URL'),
  // The gateway never calls S3 in this benchmark (no artifacts, no /readyz); nothing listens there.
  S3_ENDPOINT: 'http://127.0.0.1:9',
  S3_BUCKET: 'bench-unused',
  DATA_DIR: env('BENCH_DATA_DIR'),
  GATEWAY_PORT: '0',
  QUEUE_PREFIX: env('BENCH_QUEUE_PREFIX'),
  LOG_LEVEL: 'silent',
})
if (!config.databaseUrl || !config.s3.endpoint) throw new Error('unreachable')
// The pool size of `npm run gateway` (gateway/main.ts uses openDatabase's default).
const database = await openDatabase({ url: config.databaseUrl })
const s3 = createS3Client({ ...config.s3, endpoint: config.s3.endpoint })
const gateway = await startGateway({ config, database, s3, logger: pino({ level: 'silent' }) })

process.on('message', (msg: { op?: string; id?: number }) => {
  if (msg.op === 'stats') process.send?.({ op: 'stats', id: msg.id, ...processStats() })
  else if (msg.op === 'exit')
    void (async () => {
      await gateway.close()
      await database.close()
      s3.destroy()
      process.exit(0)
    })()
})
process.on('disconnect', () => process.exit(0))
process.send?.({ op: 'ready', url: gateway.url })
