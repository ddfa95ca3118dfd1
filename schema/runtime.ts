import pino, { type Logger } from 'pino'
import { prettyFactory } from 'pino-pretty'
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

const OMIT = new Set(['level', 'time', 'msg', 'pid', 'name', 'hostname', 'component'])

// C0 controls, DEL, C1 controls (ESC's 8-bit twin CSI is U+009B) and the Unicode line/paragraph separators:
// any of them in a logged string could end the line or drive the terminal and so forge a log entry.
// biome-ignore lint/suspicious/noControlCharactersInRegex: finding control characters is the point here
const CONTROL = /[\u0000-\u001f\u007f-\u009f\u2028\u2029]/g
const SHORT: Record<string, string> = { '\n': '\\n', '\r': '\\r', '\t': '\\t' }

/** Writes control characters as visible escapes (`\n`, `\u001b`), so one entry stays one line of plain text. */
export function escapeControl(text: string): string {
  return text.replace(CONTROL, (c) => SHORT[c] ?? `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`)
}

/** `12:00:01.234 INFO  [gateway] message  key=value ...`: pino-pretty's own layout adds a colon and brackets. */
const formatEntry = (entry: Record<string, unknown>): string => {
  const level = pino.levels.labels[Number(entry.level)]?.toUpperCase() ?? String(entry.level)
  const time = new Date(Number(entry.time)).toISOString().slice(11, 23)
  const fields = Object.entries(entry)
    .filter(([k]) => !OMIT.has(k))
    .map(([k, v]) => `${k}=${typeof v === 'string' ? v : JSON.stringify(v)}`)
  const where = String(entry.component ?? entry.name)
  return `${time} ${level.padEnd(5)} [${where}] ${String(entry.msg ?? '')}${fields.length ? `  ${fields.join(' ')}` : ''}`
}

// pino-pretty parses the entry (dropping `__proto__` keys) and names the level; the whole line comes from
// `formatEntry`, so the fields it would print itself are hidden.
const prettify = prettyFactory({
  colorize: false,
  singleLine: true,
  hideObject: true,
  ignore: [...OMIT].join(','),
  messageFormat: formatEntry,
})

/**
 * One readable line per log entry: `12:00:01.234 INFO  [gateway] message key=value ...`. The whole line is
 * escaped with `escapeControl` (message, keys and values can carry client input).
 */
export function prettyLine(json: string): string {
  return `${escapeControl(prettify(json).replace(/\n$/, ''))}\n`
}

/** Logs as JSON lines (for log collectors), or as readable lines on a terminal (LOG_FORMAT). */
export function createLogger(config: Config, name: string): Logger {
  const pretty =
    config.logFormat === 'pretty' || (config.logFormat === undefined && process.stdout.isTTY === true)
  const options = { name, level: config.logLevel, base: { pid: process.pid } }
  if (!pretty) return pino(options)
  return pino(options, { write: (line: string) => process.stdout.write(prettyLine(line)) })
}

/** The one line that says Redis is unreachable and what to do about it. */
export function redisUnreachableMessage(config: Config, err: unknown): string {
  const where = new URL(config.redisUrl)
  return (
    `Redis is not reachable at ${where.hostname}:${where.port || 6379} (${(err as Error).message.split('\n')[0]}). ` +
    'Start one (e.g. `redis-server --daemonize yes` or `docker run -p 6379:6379 redis:7`) or set REDIS_URL.\n'
  )
}

/** Exits 1 with one clear line when Redis is unreachable: the system cannot queue anything without it. */
export async function redisOrExit(config: Config): Promise<void> {
  try {
    await probeRedis(config.redisUrl)
  } catch (err) {
    process.stderr.write(redisUnreachableMessage(config, err))
    process.exit(1)
  }
}

/**
 * Runs `stop` once on SIGINT/SIGTERM, then exits 0. A second signal a while later exits at once; one
 * within a second of the first is the same Ctrl-C arriving twice (the terminal signals npm, tsx and this
 * process, and tsx relays it too) and is ignored.
 */
export function onShutdown(logger: Logger, stop: () => Promise<void>): void {
  let firstAt = 0
  const handler = (signal: NodeJS.Signals) => {
    if (firstAt > 0) {
      if (Date.now() - firstAt < 1000) return
      logger.warn({ signal }, 'second signal: exiting now')
      process.exit(130)
    }
    firstAt = Date.now()
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
