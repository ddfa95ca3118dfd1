import { readFileSync } from 'node:fs'
import path from 'node:path'
import { defaultEngineVar, ENGINES, type Engine, type EngineSettings } from './engines.ts'
import { JOB_TYPES, type JobType } from './params/index.ts'

/** Configuration of the gateway and the GPU host, read once from the environment at start. */
export interface Config {
  redisUrl: string
  /** REDIS_URL was not given: `npm start` may then run its embedded Redis at the default address. */
  redisDefault: boolean
  /** Unset: embedded PGlite under `dataDir` (all-in-one mode only). */
  databaseUrl: string | undefined
  s3: {
    /** Unset: embedded s3rver under `dataDir` (all-in-one mode only). */
    endpoint: string | undefined
    region: string
    bucket: string
    accessKeyId: string
    secretAccessKey: string
  }
  dataDir: string
  modelsDir: string
  /** name -> token. Empty: no auth, loopback only. */
  apiTokens: Map<string, string>
  metricsToken: string | undefined
  /** Requests per second each API token may make (burst: twice that). */
  rateLimitRps: number
  /** Open WebSockets and SSE streams per API token. */
  maxStreamsPerToken: number
  /** Unfinished (queued, running, retrying) jobs per API token; over it a submit gets 429. */
  maxQueuedJobsPerToken: number
  /** Largest `params` of one job, as JSON bytes; over it a submit gets 413. */
  maxParamsBytes: number
  /** Origins (`scheme://host[:port]`) besides the gateway's own that browsers may call it from. */
  allowedOrigins: Set<string>
  gatewayPort: number
  gatewayHost: string | undefined
  metricsPort: number
  /** Bind address of the GPU host's /metrics, /healthz, /readyz: loopback unless configured. */
  metricsHost: string
  /** Port of the embedded S3 server of `npm start` (used only without S3_ENDPOINT). */
  s3rverPort: number
  gpuSlots: number
  /** The engines' settings, handed to every job (SIMULATE_STEP_MS, COMFYUI_URL, KOHYA_*, F5TTS_*). */
  engines: EngineSettings
  /** DEFAULT_ENGINE_<TYPE>: the engine of a job that names none (unset: the type's first, `simulate`). */
  defaultEngines: Partial<Record<JobType, Engine>>
  killGraceSec: number
  /** First retry delay; each retry doubles it, with jitter. */
  retryBackoffMs: number
  shutdownGraceSec: number
  /** BullMQ key prefix; tests use a unique one each. */
  queuePrefix: string
  hostId: string
  logLevel: string
  /** `pretty` (one readable line per entry) or `json`; unset: pretty on a terminal, JSON otherwise. */
  logFormat: 'pretty' | 'json' | undefined
}

/** Shortest API token accepted (README "Security"). */
export const MIN_TOKEN_LENGTH = 16

export class ConfigError extends Error {
  override name = 'ConfigError'
  constructor(readonly problems: string[]) {
    super(`invalid configuration:\n  - ${problems.join('\n  - ')}`)
  }
}

type Env = Record<string, string | undefined>

/** Every variable the code reads, for documentation checks. */
export const ENV_VARS = [
  'REDIS_URL',
  'DATABASE_URL',
  'S3_ENDPOINT',
  'S3_REGION',
  'S3_BUCKET',
  'S3_ACCESS_KEY_ID',
  'S3_SECRET_ACCESS_KEY',
  'DATA_DIR',
  'MODELS_DIR',
  'API_TOKENS',
  'METRICS_TOKEN',
  'RATE_LIMIT_RPS',
  'MAX_STREAMS_PER_TOKEN',
  'MAX_QUEUED_JOBS_PER_TOKEN',
  'MAX_PARAMS_BYTES',
  'ALLOWED_ORIGINS',
  'GATEWAY_PORT',
  'GATEWAY_HOST',
  'METRICS_PORT',
  'METRICS_HOST',
  'S3RVER_PORT',
  'GPU_SLOTS',
  'SIMULATE_STEP_MS',
  'KILL_GRACE_SEC',
  'RETRY_BACKOFF_MS',
  'SHUTDOWN_GRACE_SEC',
  'QUEUE_PREFIX',
  'HOST_ID',
  'COMFYUI_URL',
  'KOHYA_DIR',
  'KOHYA_PYTHON',
  'F5TTS_DIR',
  'F5TTS_PYTHON',
  ...JOB_TYPES.map(defaultEngineVar),
  'LOG_LEVEL',
  'LOG_FORMAT',
] as const

const SECRET_VARS = new Set([
  'REDIS_URL',
  'DATABASE_URL',
  'S3_ACCESS_KEY_ID',
  'S3_SECRET_ACCESS_KEY',
  'API_TOKENS',
  'METRICS_TOKEN',
])

/**
 * Reads and validates the configuration; collects every problem before failing so that one run shows
 * them all. Secrets also accept `NAME_FILE` (Docker secrets).
 */
export function loadConfig(env: Env = process.env): Config {
  const problems: string[] = []

  const raw = (name: string): string | undefined => {
    const file = env[`${name}_FILE`]
    if (file && SECRET_VARS.has(name)) {
      try {
        return readFileSync(file, 'utf8').trim()
      } catch (err) {
        problems.push(`${name}_FILE: cannot read ${file} (${(err as NodeJS.ErrnoException).code ?? 'error'})`)
        return undefined
      }
    }
    const value = env[name]
    return value === '' ? undefined : value
  }
  const int = (name: string, fallback: number, min: number, max: number): number => {
    const value = raw(name)
    if (value === undefined) return fallback
    const n = Number(value)
    if (!Number.isInteger(n) || n < min || n > max) {
      problems.push(`${name}: must be an integer from ${min} to ${max}, got "${value}"`)
      return fallback
    }
    return n
  }
  const url = (name: string, protocols: string[], fallback?: string): string | undefined => {
    const value = raw(name) ?? fallback
    if (value === undefined) return undefined
    try {
      const parsed = new URL(value)
      if (!protocols.includes(parsed.protocol)) throw new Error('protocol')
    } catch {
      // Never print the value: URLs carry passwords.
      problems.push(`${name}: must be a ${protocols.join(' or ')}// URL`)
    }
    return value
  }

  const dir = (name: string): string | undefined => {
    const value = raw(name)
    return value === undefined ? undefined : path.resolve(value)
  }
  const defaultEngines = (): Partial<Record<JobType, Engine>> => {
    const chosen: Partial<Record<JobType, Engine>> = {}
    for (const type of JOB_TYPES) {
      const name = defaultEngineVar(type)
      const value = raw(name)
      if (value === undefined) continue
      const engines: readonly string[] = ENGINES[type]
      if (engines.includes(value)) chosen[type] = value as Engine
      else problems.push(`${name}: must be one of ${engines.join(', ')}`)
    }
    return chosen
  }

  // 16+ characters: long enough that guessing (rate-limited per client) cannot succeed. Names have no
  // "." because a token's own jobIds are `<name>.<jobId>` (see gateway/app.ts), which must not collide.
  const apiTokens = new Map<string, string>()
  const tokens = raw('API_TOKENS')
  if (tokens) {
    for (const pair of tokens
      .split(',')
      .map((s) => s.trim())
      .filter(Boolean)) {
      const at = pair.indexOf(':')
      const name = pair.slice(0, at)
      const token = pair.slice(at + 1)
      if (at <= 0 || token.length < MIN_TOKEN_LENGTH || !/^[A-Za-z0-9_-]{1,32}$/.test(name)) {
        problems.push(
          `API_TOKENS: each entry must be name:token, a name of 1 to 32 letters, digits, "_" or "-" and a token of at least ${MIN_TOKEN_LENGTH} characters`,
        )
        break
      }
      if (apiTokens.has(name)) problems.push(`API_TOKENS: the name "${name}" appears twice`)
      apiTokens.set(name, token)
    }
  }

  const allowedOrigins = new Set<string>()
  for (const entry of (raw('ALLOWED_ORIGINS') ?? '')
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean)) {
    let origin: string | undefined
    try {
      const u = new URL(entry)
      if ((u.protocol === 'http:' || u.protocol === 'https:') && entry.replace(/\/$/, '') === u.origin)
        origin = u.origin
    } catch {}
    if (origin) allowedOrigins.add(origin)
    else problems.push('ALLOWED_ORIGINS: each entry must be an origin such as https://console.example.com')
  }

  const dataDir = path.resolve(raw('DATA_DIR') ?? './data')
  const config: Config = {
    redisUrl: url('REDIS_URL', ['redis:', 'rediss:'], 'redis://127.0.0.1:6379') ?? '',
    redisDefault: raw('REDIS_URL') === undefined,
    databaseUrl: url('DATABASE_URL', ['postgres:', 'postgresql:']),
    s3: {
      endpoint: url('S3_ENDPOINT', ['http:', 'https:']),
      region: raw('S3_REGION') ?? 'us-east-1',
      bucket: raw('S3_BUCKET') ?? 'gpu-artifacts',
      accessKeyId: raw('S3_ACCESS_KEY_ID') ?? 'S3RVER',
      secretAccessKey: raw('S3_SECRET_ACCESS_KEY') ?? 'S3RVER',
    },
    dataDir,
    modelsDir: path.resolve(raw('MODELS_DIR') ?? '/opt/models'),
    apiTokens,
    metricsToken: raw('METRICS_TOKEN'),
    rateLimitRps: int('RATE_LIMIT_RPS', 50, 1, 100_000),
    maxStreamsPerToken: int('MAX_STREAMS_PER_TOKEN', 50, 1, 100_000),
    maxQueuedJobsPerToken: int('MAX_QUEUED_JOBS_PER_TOKEN', 1000, 1, 10_000_000),
    maxParamsBytes: int('MAX_PARAMS_BYTES', 64 * 1024, 1024, 1024 * 1024),
    allowedOrigins,
    gatewayPort: int('GATEWAY_PORT', 8080, 0, 65535),
    gatewayHost: raw('GATEWAY_HOST'),
    metricsPort: int('METRICS_PORT', 9464, 0, 65535),
    metricsHost: raw('METRICS_HOST') ?? '127.0.0.1',
    s3rverPort: int('S3RVER_PORT', 9000, 0, 65535),
    gpuSlots: int('GPU_SLOTS', 1, 1, 64),
    engines: {
      simulateStepMs: int('SIMULATE_STEP_MS', 200, 0, 600_000),
      comfyuiUrl: url('COMFYUI_URL', ['http:', 'https:']),
      kohyaDir: dir('KOHYA_DIR'),
      kohyaPython: raw('KOHYA_PYTHON') ?? 'python3',
      f5ttsDir: dir('F5TTS_DIR'),
      f5ttsPython: raw('F5TTS_PYTHON') ?? 'python3',
    },
    defaultEngines: defaultEngines(),
    killGraceSec: int('KILL_GRACE_SEC', 10, 0, 3600),
    retryBackoffMs: int('RETRY_BACKOFF_MS', 5000, 0, 3_600_000),
    shutdownGraceSec: int('SHUTDOWN_GRACE_SEC', 30, 0, 86_400),
    queuePrefix: raw('QUEUE_PREFIX') ?? 'bull',
    hostId: raw('HOST_ID') ?? `${process.env.HOSTNAME ?? 'host'}-${process.pid}`,
    logLevel: raw('LOG_LEVEL') ?? 'info',
    logFormat: undefined,
  }
  if (!/^[A-Za-z0-9.:-]+$/.test(config.metricsHost))
    problems.push('METRICS_HOST: must be an IP address or a host name')
  if (!/^[a-z0-9-]{3,63}$/.test(config.s3.bucket)) problems.push('S3_BUCKET: must be a valid bucket name')
  // A Redis Cluster hash tag ({name}) keeps all of a queue's keys on one slot, as BullMQ requires there.
  if (!/^(\{[A-Za-z0-9_-]+\}|[A-Za-z0-9_-]+)$/.test(config.queuePrefix))
    problems.push('QUEUE_PREFIX: letters, digits, "_" and "-", optionally as a hash tag such as {gpu-jobs}')
  if (!['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'].includes(config.logLevel))
    problems.push('LOG_LEVEL: must be one of fatal, error, warn, info, debug, trace, silent')
  const logFormat = raw('LOG_FORMAT')
  if (logFormat === 'pretty' || logFormat === 'json') config.logFormat = logFormat
  else if (logFormat !== undefined) problems.push('LOG_FORMAT: must be pretty or json')
  if (problems.length > 0) throw new ConfigError(problems)
  return config
}
