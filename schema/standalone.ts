/**
 * Start-up of one service on its own (`npm run gateway`, `npm run gpu-host`: compose, Kubernetes), the
 * steps both share, in order: config, logger, the backends it needs named, ports free, Redis answering,
 * Postgres open, then the service, and a clean stop on SIGINT/SIGTERM. `npm start` (start.ts) runs both
 * in one process with embedded backends instead.
 */
import type { S3Client } from '@aws-sdk/client-s3'
import type { Logger } from 'pino'
import { createS3Client } from './clients.ts'
import type { Config } from './config.ts'
import { type Database, openDatabase } from './db/connect.ts'
import { configOrExit, createLogger, onShutdown, redisOrExit } from './runtime.ts'
import { assertPortsFree, exitOnStartupError, type PortUse } from './startup.ts'

export interface StandaloneService {
  /** The npm script, and the logger's name. */
  name: 'gateway' | 'gpu-host'
  /** The ports it listens on, checked before anything starts so a taken one is a one-line error. */
  ports(config: Config): PortUse[]
  /** Postgres connections it keeps. */
  poolSize?: number
  start(o: {
    config: Config
    logger: Logger
    database: Database
    s3: { client: S3Client; endpoint: string }
  }): Promise<{ close(): Promise<void> }>
}

export async function runStandalone(service: StandaloneService): Promise<void> {
  const config = configOrExit()
  const logger = createLogger(config, service.name)
  const endpoint = config.s3.endpoint
  if (!config.databaseUrl || !endpoint) {
    process.stderr.write(
      `npm run ${service.name} needs DATABASE_URL and S3_ENDPOINT (use \`npm start\` for the embedded all-in-one mode)\n`,
    )
    process.exit(2)
  }
  const ports = service.ports(config)
  await assertPortsFree(ports).catch((err: unknown) => exitOnStartupError(err, ports))
  await redisOrExit(config)
  const database = await openDatabase({ url: config.databaseUrl, poolSize: service.poolSize })
  const running = await service
    .start({ config, logger, database, s3: { client: createS3Client({ ...config.s3, endpoint }), endpoint } })
    .catch((err: unknown) => exitOnStartupError(err, ports))
  onShutdown(logger, async () => {
    await running.close()
    await database.close()
  })
}
