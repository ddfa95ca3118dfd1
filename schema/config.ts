import { readFileSync } from 'node:fs'
import path from 'node:path'
import * as v from 'valibot'
import { defaultEngineVar, ENGINES, type Engine, type EngineSettings, isEngineOf } from './engines.ts'
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
  /** Jobs at once on one GPU or MIG instance, as far as their VRAM fits (virtual slots take one each). */
  maxJobsPerGpu: number
  /** SPARE_PROCESSES: warm job processes kept per GPU device (unset: its job places + 1; 0: none). */
  spareProcesses: number | undefined
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

// Each schema below checks one variable; its messages say why a value is wrong and never repeat the value
// of a URL or a secret (URLs carry passwords). `loadConfig` puts the variable's name in front.

const wholeNumber = (min: number, max: number) =>
  v.pipe(
    v.string(),
    v.check(
      (s) => s.trim() !== '' && Number.isInteger(Number(s)) && Number(s) >= min && Number(s) <= max,
      (issue) => `must be an integer from ${min} to ${max}, got "${issue.input}"`,
    ),
    v.transform(Number),
  )
const integer = (fallback: number, min: number, max: number) =>
  v.optional(wholeNumber(min, max), String(fallback))

const url = (protocols: string[]) =>
  v.pipe(
    v.string(),
    v.check(
      (s) => URL.canParse(s) && protocols.includes(new URL(s).protocol),
      `must be a ${protocols.join(' or ')}// URL`,
    ),
  )

const text = (fallback: string) => v.optional(v.string(), fallback)
const absolutePath = v.pipe(
  v.string(),
  v.transform((dir: string) => path.resolve(dir)),
)
const matching = (pattern: RegExp, why: string) => v.pipe(v.string(), v.regex(pattern, why))

/** A comma-separated list, entries trimmed, empty ones dropped. */
const list = v.pipe(
  v.string(),
  v.transform((s: string) =>
    s
      .split(',')
      .map((entry) => entry.trim())
      .filter(Boolean),
  ),
)

// 16+ characters: long enough that guessing (rate-limited per client) cannot succeed. Names have no
// "." because a token's own jobIds are `<name>.<jobId>` (see gateway/app.ts), which must not collide.
const TOKEN_ENTRY = new RegExp(`^[A-Za-z0-9_-]{1,32}:.{${MIN_TOKEN_LENGTH},}$`)
const tokenPairs = (entries: string[]): [string, string][] =>
  entries.map((entry) => [entry.slice(0, entry.indexOf(':')), entry.slice(entry.indexOf(':') + 1)])
const repeatedName = (entries: string[]): string | undefined =>
  tokenPairs(entries)
    .map(([name]) => name)
    .find((name, i, names) => names.indexOf(name) !== i)

const apiTokens = v.pipe(
  list,
  v.everyItem(
    (entry) => TOKEN_ENTRY.test(entry),
    `each entry must be name:token, a name of 1 to 32 letters, digits, "_" or "-" and a token of at least ${MIN_TOKEN_LENGTH} characters`,
  ),
  v.check(
    (entries) => repeatedName(entries) === undefined,
    (issue) => `the name "${repeatedName(issue.input)}" appears twice`,
  ),
  v.transform((entries) => new Map(tokenPairs(entries))),
)

const isOrigin = (entry: string): boolean => {
  if (!URL.canParse(entry)) return false
  const u = new URL(entry)
  return (u.protocol === 'http:' || u.protocol === 'https:') && entry.replace(/\/$/, '') === u.origin
}
const allowedOrigins = v.pipe(
  list,
  v.everyItem(isOrigin, 'each entry must be an origin such as https://console.example.com'),
  v.transform((entries) => new Set(entries.map((entry) => new URL(entry).origin))),
)

const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const

/** The environment: one entry per variable the code reads (empty counts as unset). */
const EnvSchema = v.object({
  REDIS_URL: v.optional(url(['redis:', 'rediss:']), 'redis://127.0.0.1:6379'),
  DATABASE_URL: v.optional(url(['postgres:', 'postgresql:'])),
  S3_ENDPOINT: v.optional(url(['http:', 'https:'])),
  S3_REGION: text('us-east-1'),
  S3_BUCKET: v.optional(matching(/^[a-z0-9-]{3,63}$/, 'must be a valid bucket name'), 'gpu-artifacts'),
  S3_ACCESS_KEY_ID: text('S3RVER'),
  S3_SECRET_ACCESS_KEY: text('S3RVER'),
  DATA_DIR: v.optional(absolutePath, './data'),
  MODELS_DIR: v.optional(absolutePath, '/opt/models'),
  API_TOKENS: v.optional(apiTokens, ''),
  METRICS_TOKEN: v.optional(v.string()),
  RATE_LIMIT_RPS: integer(50, 1, 100_000),
  MAX_STREAMS_PER_TOKEN: integer(50, 1, 100_000),
  MAX_QUEUED_JOBS_PER_TOKEN: integer(1000, 1, 10_000_000),
  MAX_PARAMS_BYTES: integer(64 * 1024, 1024, 1024 * 1024),
  ALLOWED_ORIGINS: v.optional(allowedOrigins, ''),
  GATEWAY_PORT: integer(8080, 0, 65535),
  GATEWAY_HOST: v.optional(v.string()),
  METRICS_PORT: integer(9464, 0, 65535),
  METRICS_HOST: v.optional(
    matching(/^[A-Za-z0-9.:-]+$/, 'must be an IP address or a host name'),
    '127.0.0.1',
  ),
  S3RVER_PORT: integer(9000, 0, 65535),
  GPU_SLOTS: integer(1, 1, 64),
  // Each job is a process with its own CUDA context (some hundred MiB) and shares the GPU's compute:
  // 4 keeps a large GPU busy without jobs slowing each other to a crawl.
  MAX_JOBS_PER_GPU: integer(4, 1, 64),
  // Unset: as many as the device has job places, plus one (gpu-host/spare-pool.ts).
  SPARE_PROCESSES: v.optional(wholeNumber(0, 64)),
  SIMULATE_STEP_MS: integer(200, 0, 600_000),
  KILL_GRACE_SEC: integer(10, 0, 3600),
  RETRY_BACKOFF_MS: integer(5000, 0, 3_600_000),
  SHUTDOWN_GRACE_SEC: integer(30, 0, 86_400),
  // A Redis Cluster hash tag ({name}) keeps all of a queue's keys on one slot, as BullMQ requires there.
  QUEUE_PREFIX: v.optional(
    matching(
      /^(\{[A-Za-z0-9_-]+\}|[A-Za-z0-9_-]+)$/,
      'letters, digits, "_" and "-", optionally as a hash tag such as {gpu-jobs}',
    ),
    'bull',
  ),
  HOST_ID: v.optional(v.string()),
  COMFYUI_URL: v.optional(url(['http:', 'https:'])),
  KOHYA_DIR: v.optional(absolutePath),
  KOHYA_PYTHON: text('python3'),
  F5TTS_DIR: v.optional(absolutePath),
  F5TTS_PYTHON: text('python3'),
  ...Object.fromEntries(
    JOB_TYPES.map((type) => {
      const engines: readonly string[] = ENGINES[type]
      return [
        defaultEngineVar(type),
        v.optional(v.picklist(engines, `must be one of ${engines.join(', ')}`)),
      ] as const
    }),
  ),
  LOG_LEVEL: v.optional(v.picklist(LOG_LEVELS, `must be one of ${LOG_LEVELS.join(', ')}`), 'info'),
  LOG_FORMAT: v.optional(v.picklist(['pretty', 'json'], 'must be pretty or json')),
})

/** Every variable the code reads, for documentation checks. */
export const ENV_VARS: readonly string[] = Object.keys(EnvSchema.entries)

const SECRET_VARS = new Set([
  'REDIS_URL',
  'DATABASE_URL',
  'S3_ACCESS_KEY_ID',
  'S3_SECRET_ACCESS_KEY',
  'API_TOKENS',
  'METRICS_TOKEN',
])

/** The variables as the schema reads them: empty ones dropped, secrets read from `NAME_FILE` where given. */
function resolveEnv(env: Env, problems: string[]): Env {
  const resolved: Env = {}
  for (const name of ENV_VARS) {
    const file = env[`${name}_FILE`]
    if (file && SECRET_VARS.has(name)) {
      try {
        resolved[name] = readFileSync(file, 'utf8').trim()
      } catch (err) {
        problems.push(`${name}_FILE: cannot read ${file} (${(err as NodeJS.ErrnoException).code ?? 'error'})`)
      }
    } else if (env[name] !== '') resolved[name] = env[name]
  }
  return resolved
}

/**
 * Reads and validates the configuration; collects every problem before failing so that one run shows
 * them all. Secrets also accept `NAME_FILE` (Docker secrets).
 *
 * @example loadConfig({ GATEWAY_PORT: '8081' }).gatewayPort // 8081
 */
export function loadConfig(env: Env = process.env): Config {
  const problems: string[] = []
  const resolved = resolveEnv(env, problems)
  const parsed = v.safeParse(EnvSchema, resolved, { abortEarly: false })
  if (!parsed.success)
    for (const issue of parsed.issues)
      problems.push(`${issue.path?.[0]?.key ?? 'environment'}: ${issue.message}`)
  if (problems.length > 0 || !parsed.success) throw new ConfigError(problems)
  const e = parsed.output
  // DEFAULT_ENGINE_<TYPE> entries come from a list, so their names are not keys of the output's type.
  const byName: Record<string, unknown> = e
  const defaultEngines: Partial<Record<JobType, Engine>> = {}
  for (const type of JOB_TYPES) {
    const engine = byName[defaultEngineVar(type)]
    if (isEngineOf(type, engine)) defaultEngines[type] = engine
  }
  return {
    redisUrl: e.REDIS_URL,
    redisDefault: resolved.REDIS_URL === undefined,
    databaseUrl: e.DATABASE_URL,
    s3: {
      endpoint: e.S3_ENDPOINT,
      region: e.S3_REGION,
      bucket: e.S3_BUCKET,
      accessKeyId: e.S3_ACCESS_KEY_ID,
      secretAccessKey: e.S3_SECRET_ACCESS_KEY,
    },
    dataDir: e.DATA_DIR,
    modelsDir: e.MODELS_DIR,
    apiTokens: e.API_TOKENS,
    metricsToken: e.METRICS_TOKEN,
    rateLimitRps: e.RATE_LIMIT_RPS,
    maxStreamsPerToken: e.MAX_STREAMS_PER_TOKEN,
    maxQueuedJobsPerToken: e.MAX_QUEUED_JOBS_PER_TOKEN,
    maxParamsBytes: e.MAX_PARAMS_BYTES,
    allowedOrigins: e.ALLOWED_ORIGINS,
    gatewayPort: e.GATEWAY_PORT,
    gatewayHost: e.GATEWAY_HOST,
    metricsPort: e.METRICS_PORT,
    metricsHost: e.METRICS_HOST,
    s3rverPort: e.S3RVER_PORT,
    gpuSlots: e.GPU_SLOTS,
    maxJobsPerGpu: e.MAX_JOBS_PER_GPU,
    spareProcesses: e.SPARE_PROCESSES,
    engines: {
      simulateStepMs: e.SIMULATE_STEP_MS,
      comfyuiUrl: e.COMFYUI_URL,
      kohyaDir: e.KOHYA_DIR,
      kohyaPython: e.KOHYA_PYTHON,
      f5ttsDir: e.F5TTS_DIR,
      f5ttsPython: e.F5TTS_PYTHON,
    },
    defaultEngines,
    killGraceSec: e.KILL_GRACE_SEC,
    retryBackoffMs: e.RETRY_BACKOFF_MS,
    shutdownGraceSec: e.SHUTDOWN_GRACE_SEC,
    queuePrefix: e.QUEUE_PREFIX,
    hostId: e.HOST_ID ?? `${process.env.HOSTNAME ?? 'host'}-${process.pid}`,
    logLevel: e.LOG_LEVEL,
    logFormat: e.LOG_FORMAT,
  }
}
