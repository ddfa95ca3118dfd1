import pino, { type Logger } from 'pino'
import { probeRedis } from './clients.ts'
import { type Config, ConfigError, loadConfig } from './config.ts'

/** Reads the configuration or prints every problem and exits 2. */
export function configOrExit(): Config {
  try {
    return loadConfig()
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`${err.message}\n`)
      process.exit(2)
    }
    throw err
  }
}

export const createLogger = (config: Config, name: string): Logger =>
  pino({ name, level: config.logLevel, base: { pid: process.pid } })

/** Exits 1 with one clear line when Redis is unreachable: the system cannot queue anything without it. */
export async function redisOrExit(config: Config): Promise<void> {
  try {
    await probeRedis(config.redisUrl)
  } catch (err) {
    const where = new URL(config.redisUrl)
    process.stderr.write(
      `Redis is not reachable at ${where.hostname}:${where.port || 6379} (${(err as Error).message.split('\n')[0]}). ` +
        'Start one (e.g. `redis-server --daemonize yes` or `docker run -p 6379:6379 redis:7`) or set REDIS_URL.\n',
    )
    process.exit(1)
  }
}

/** Runs `stop` once on SIGINT/SIGTERM, then exits 0 (a second signal exits at once). */
export function onShutdown(logger: Logger, stop: () => Promise<void>): void {
  let stopping = false
  const handler = (signal: NodeJS.Signals) => {
    if (stopping) {
      logger.warn({ signal }, 'second signal: exiting now')
      process.exit(130)
    }
    stopping = true
    logger.info({ signal }, 'shutting down')
    stop().then(
      () => process.exit(0),
      (err: unknown) => {
        logger.error({ err }, 'shutdown failed')
        process.exit(1)
      },
    )
  }
  process.on('SIGINT', handler)
  process.on('SIGTERM', handler)
}
