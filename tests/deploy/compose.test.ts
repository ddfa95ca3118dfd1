import { spawnSync } from 'node:child_process'
import { readdirSync } from 'node:fs'
import path from 'node:path'
import { beforeAll, describe, expect, it } from 'vitest'
import { ENV_VARS } from '../../schema/config.ts'
import {
  documentedEnvNames,
  durationSeconds,
  envFileValues,
  readRepoFile,
  repoRoot,
  run,
  which,
} from './helpers.ts'
import { get, isMap, parseYaml, type YamlMap, type YamlValue } from './yaml.ts'

const COMPOSE_FILE = 'infra/docker-compose.yml'
const ENV_EXAMPLE = '.env.example'

const REQUIRED_SERVICES = [
  'redis',
  'postgres',
  'minio',
  'minio-init',
  'prometheus',
  'grafana',
  'dcgm-exporter',
  'gateway',
  'gpu-host',
  'comfyui',
  'ollama',
]
const GPU_SERVICES = ['gpu-host', 'dcgm-exporter', 'comfyui', 'ollama']
const MODEL_SERVICES = ['gpu-host', 'comfyui', 'ollama']
const APP_SERVICES = ['gateway', 'gpu-host']
/** Services without a healthcheck, and why. */
const NO_HEALTHCHECK: Record<string, string> = {
  'minio-init': 'one-shot job; others wait for service_completed_successfully',
  'dcgm-exporter': 'distroless image: no shell or HTTP client inside; Prometheus watches up{job="dcgm"}',
}
/** Variables the code may read that nobody configures: the OS, the container runtime or the host sets them. */
const RUNTIME_PROVIDED = new Set(['HOSTNAME', 'PATH', 'CUDA_VISIBLE_DEVICES', 'NVIDIA_VISIBLE_DEVICES'])

/** Stand-ins for the secrets that .env.example leaves empty on purpose (compose refuses to run without them). */
const TEST_SECRETS = {
  POSTGRES_PASSWORD: 'test-postgres-password',
  MINIO_ROOT_USER: 'test-minio-root',
  MINIO_ROOT_PASSWORD: 'test-minio-root-password',
  GF_SECURITY_ADMIN_PASSWORD: 'test-grafana-password',
  S3_ACCESS_KEY_ID: 'test-app',
  S3_SECRET_ACCESS_KEY: 'test-app-secret',
}

const envExample = readRepoFile(ENV_EXAMPLE)
const composeSource = readRepoFile(COMPOSE_FILE)
/** The compose file without its comments. */
const composeCode = composeSource
  .split('\n')
  .filter((line) => !line.trim().startsWith('#'))
  .map((line) => line.replace(/\s+#\s.*$/, ''))
  .join('\n')
const documented = documentedEnvNames(envExample)

function sourceFiles(dir: string): string[] {
  const out: string[] = []
  let entries: import('node:fs').Dirent[]
  try {
    entries = readdirSync(path.join(repoRoot, dir), { withFileTypes: true })
  } catch {
    return out
  }
  for (const entry of entries) {
    const rel = path.join(dir, entry.name)
    if (entry.isDirectory()) {
      if (!['node_modules', 'fixtures', '__fixtures__'].includes(entry.name)) out.push(...sourceFiles(rel))
    } else if (entry.name.endsWith('.ts') && !entry.name.endsWith('.test.ts')) out.push(rel)
  }
  return out
}

/** Environment variable names read by a TypeScript source (writes such as `env.X = ...` are not reads). */
function envReads(source: string): string[] {
  const names: string[] = []
  const patterns = [
    /\bprocess\.env\.([A-Z_][A-Z0-9_]*)\b(?!\s*=[^=])/g,
    /\bprocess\.env\[['"`]([A-Z_][A-Z0-9_]*)['"`]\](?!\s*=[^=])/g,
    /(?<![.\w])env\.([A-Z_][A-Z0-9_]*)\b(?!\s*=[^=])/g,
    /(?<![.\w])env\[['"`]([A-Z_][A-Z0-9_]*)['"`]\](?!\s*=[^=])/g,
    // schema/config.ts reads through small helpers: raw('NAME'), int('NAME', ...), url('NAME', ...)
    /\b(?:raw|int|url)\(['"`]([A-Z_][A-Z0-9_]*)['"`]/g,
  ]
  for (const re of patterns) for (const m of source.matchAll(re)) names.push(m[1] as string)
  return names
}

describe('.env.example documents the configuration', () => {
  it('lists every variable of ENV_VARS', () => {
    const missing = ENV_VARS.filter((name) => !documented.has(name))
    expect(missing, `add these to ${ENV_EXAMPLE}`).toEqual([])
  })

  it('covers every variable read in schema/, gateway/ and gpu-host/', () => {
    const allowed = new Set<string>([...ENV_VARS, ...documented, ...RUNTIME_PROVIDED])
    const unknown: string[] = []
    const files = ['schema', 'gateway', 'gpu-host'].flatMap(sourceFiles)
    expect(files.length).toBeGreaterThan(0)
    for (const file of files) {
      for (const name of envReads(readRepoFile(file))) {
        const base = name.endsWith('_FILE') ? name.slice(0, -'_FILE'.length) : name
        if (!allowed.has(name) && !allowed.has(base)) unknown.push(`${file}: ${name}`)
      }
    }
    expect(unknown, `add these to ENV_VARS (schema/config.ts) and ${ENV_EXAMPLE}`).toEqual([])
  })

  it('finds env reads in the forms the code uses', () => {
    expect(
      envReads(
        "process.env.A_B; process.env['C']; env.D; env['E']; raw('F'); int('G', 1); env.H = 'x'; x.env.I",
      ),
    ).toEqual(['A_B', 'C', 'D', 'E', 'F', 'G'])
  })

  it('commits no secret values', () => {
    const values = envFileValues(envExample)
    for (const name of [
      'POSTGRES_PASSWORD',
      'MINIO_ROOT_PASSWORD',
      'GF_SECURITY_ADMIN_PASSWORD',
      'API_TOKENS',
    ]) {
      expect(values.get(name), name).toBe('')
    }
    for (const name of ['S3_SECRET_ACCESS_KEY', 'METRICS_TOKEN', 'DATABASE_URL', 'REDIS_URL']) {
      expect(values.get(name) ?? '', name).toBe('')
    }
  })
})

describe('infra/docker-compose.yml source', () => {
  it('documents every interpolated variable in .env.example', () => {
    const names = new Set([...composeCode.matchAll(/\$\{([A-Z_][A-Z0-9_]*)/g)].map((m) => m[1] as string))
    const missing = [...names].filter((name) => {
      const base = name.endsWith('_FILE') ? name.slice(0, -'_FILE'.length) : name
      return !documented.has(name) && !documented.has(base)
    })
    expect(missing, `document these in ${ENV_EXAMPLE}`).toEqual([])
  })

  it('avoids keys docker-compose 1.29 rejects and files that may not exist', () => {
    expect(composeCode).not.toMatch(/^\s+gpus:/m)
    expect(composeCode).not.toMatch(/^\s+env_file:/m)
    expect(composeCode).not.toMatch(/^version:/m)
    // Nested ${...:-${...}} is read wrongly by docker-compose 1.29.
    expect(composeCode).not.toMatch(/\$\{[A-Z_0-9]+:-[^}]*\$\{/)
  })

  it('has no literal secrets: passwords and keys are interpolated', () => {
    for (const m of composeCode.matchAll(
      /^\s+([A-Z_]*(?:PASSWORD|SECRET|TOKEN|ACCESS_KEY)[A-Z_]*):\s*(.*)$/gm,
    )) {
      const value = (m[2] as string).trim()
      expect(value === '' || value.startsWith('${') || value.startsWith('"${'), `${m[1]}: ${value}`).toBe(
        true,
      )
    }
  })
})

interface ComposeCli {
  file: string
  prefix: string[]
  label: string
}

function findComposeCli(): ComposeCli | undefined {
  const v1 = which('docker-compose')
  if (v1) return { file: v1, prefix: [], label: 'docker-compose' }
  const docker = which('docker')
  // A docker CLI without its compose plugin answers `docker compose` with "unknown command".
  if (docker && spawnSync(docker, ['compose', 'version'], { stdio: 'ignore' }).status === 0)
    return { file: docker, prefix: ['compose'], label: 'docker compose' }
  return undefined
}

const cli = findComposeCli()
const suiteName = cli
  ? `${cli.label} config`
  : 'docker-compose config (skipped: neither docker-compose nor docker with its compose plugin is on PATH; apt-get install docker-compose)'

function cleanEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  // Only what the CLI needs: an inherited REDIS_URL or POSTGRES_PASSWORD must not change the result.
  const env: NodeJS.ProcessEnv = { PATH: process.env.PATH, HOME: process.env.HOME ?? '/tmp', LANG: 'C.UTF-8' }
  return { ...env, ...extra }
}

function composeConfig(extraEnv: Record<string, string>) {
  if (!cli) throw new Error('no compose CLI')
  return run(cli.file, [...cli.prefix, '-f', COMPOSE_FILE, '--env-file', ENV_EXAMPLE, 'config'], {
    env: cleanEnv(extraEnv),
  })
}

/** `source:target[:mode]` strings (v1) or `{source, target}` objects (v2) as [source, target] pairs. */
function volumeMounts(service: YamlValue | undefined): [string, string][] {
  const vols = get(service, 'volumes')
  if (!Array.isArray(vols)) return []
  return vols.map((v): [string, string] => {
    if (typeof v === 'string') {
      const parts = v.split(':')
      return [parts[0] ?? '', parts[1] ?? '']
    }
    return [String(get(v, 'source') ?? ''), String(get(v, 'target') ?? '')]
  })
}

describe.skipIf(!cli)(suiteName, () => {
  let config: YamlMap
  let services: YamlMap

  beforeAll(async () => {
    const result = await composeConfig(TEST_SECRETS)
    if (result.code !== 0) {
      if (cli?.prefix.length && /is not a docker command|unknown (command|flag)/i.test(result.stderr)) {
        throw new Error(`docker has no compose plugin; install docker-compose or docker-compose-plugin`)
      }
      throw new Error(`compose config failed (${result.code}):\n${result.stderr}`)
    }
    const parsed = parseYaml(result.stdout)
    if (!isMap(parsed) || !isMap(parsed.services)) throw new Error('compose config printed no services')
    config = parsed
    services = parsed.services
  })

  it('accepts the file with .env.example and the secrets filled in', () => {
    expect(Object.keys(services).length).toBeGreaterThan(0)
  })

  it('refuses to run while a secret is empty', async () => {
    const result = await composeConfig({})
    expect(result.code).not.toBe(0)
    expect(result.stderr).toMatch(/POSTGRES_PASSWORD|MINIO_ROOT|GF_SECURITY_ADMIN_PASSWORD|S3_/)
  })

  it('defines every required service', () => {
    expect(Object.keys(services).sort()).toEqual(expect.arrayContaining(REQUIRED_SERVICES))
  })

  it('gives every long-running service a healthcheck', () => {
    for (const name of REQUIRED_SERVICES) {
      if (name in NO_HEALTHCHECK) continue
      const test = get(services[name], 'healthcheck', 'test')
      expect(Array.isArray(test) || typeof test === 'string', `${name} has no healthcheck`).toBe(true)
    }
  })

  it('starts the app only after its backing services are healthy and the bucket exists', () => {
    for (const name of APP_SERVICES) {
      const deps = get(services[name], 'depends_on')
      expect(get(deps, 'redis', 'condition'), name).toBe('service_healthy')
      expect(get(deps, 'postgres', 'condition'), name).toBe('service_healthy')
      expect(get(deps, 'minio', 'condition'), name).toBe('service_healthy')
      expect(get(deps, 'minio-init', 'condition'), name).toBe('service_completed_successfully')
    }
    expect(get(services['minio-init'], 'depends_on', 'minio', 'condition')).toBe('service_healthy')
    expect(String(get(services['minio-init'], 'restart'))).toBe('no')
    expect(get(services.grafana, 'depends_on', 'prometheus', 'condition')).toBe('service_healthy')
  })

  it('reserves GPUs through deploy.resources.reservations.devices', () => {
    for (const name of GPU_SERVICES) {
      const devices = get(services[name], 'deploy', 'resources', 'reservations', 'devices')
      expect(Array.isArray(devices) && devices.length > 0, `${name} reserves no GPU`).toBe(true)
      const device = (devices as YamlValue[])[0]
      expect(get(device, 'driver'), name).toBe('nvidia')
      expect(get(device, 'capabilities'), name).toEqual(['gpu'])
    }
  })

  it('mounts the shared models volume at /opt/models in every GPU service that loads models', () => {
    for (const name of MODEL_SERVICES) {
      expect(volumeMounts(services[name]), name).toContainEqual(['models', '/opt/models'])
    }
    const models = get(config, 'volumes', 'models')
    expect(get(models, 'driver')).toBe('local')
    expect(get(models, 'driver_opts', 'type')).toBe('none')
    expect(get(models, 'driver_opts', 'o')).toBe('bind')
    expect(get(models, 'driver_opts', 'device')).toBe('/mnt/tank/models')
  })

  it('puts ComfyUI and Ollama behind the engines profile', () => {
    expect(get(services.comfyui, 'profiles')).toEqual(['engines'])
    expect(get(services.ollama, 'profiles')).toEqual(['engines'])
  })

  it("points the GPU host at the image's engines and keeps hub files on the models volume, offline", () => {
    const env = get(services['gpu-host'], 'environment')
    // The engines cuda/Dockerfile installs: x-app-env's empty values must not hide them.
    expect(get(env, 'KOHYA_DIR')).toBe('/opt/engines/sd-scripts')
    expect(get(env, 'KOHYA_PYTHON')).toBe('/opt/engines/sd-scripts/.venv/bin/python')
    expect(get(env, 'F5TTS_DIR')).toBe('/opt/engines/F5-TTS')
    expect(get(env, 'F5TTS_PYTHON')).toBe('/opt/engines/F5-TTS/.venv/bin/python')
    expect(String(get(env, 'HF_HOME'))).toMatch(/^\/opt\/models\//)
    expect(String(get(env, 'HF_HUB_OFFLINE'))).toBe('1')
    // Unset unless .env sets it with the engines profile: a host advertises comfyui exactly when it is set.
    expect(get(env, 'COMFYUI_URL') ?? '').toBe('')
    expect(get(services.comfyui, 'healthcheck', 'test')).toContain(
      "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8188/system_stats', timeout=4)",
    )
  })

  it('gives the GPU host longer to stop than its drain takes', () => {
    const values = envFileValues(envExample)
    const shutdown = Number(values.get('SHUTDOWN_GRACE_SEC') || 30)
    const kill = Number(values.get('KILL_GRACE_SEC') || 10)
    const stop = durationSeconds(String(get(services['gpu-host'], 'stop_grace_period')))
    expect(stop).toBeGreaterThan(shutdown + kill)
  })

  it('runs Redis with AOF and noeviction', () => {
    const command = get(services.redis, 'command')
    const text = Array.isArray(command) ? command.join(' ') : String(command)
    expect(text).toContain('--appendonly yes')
    expect(text).toContain('--appendfsync everysec')
    expect(text).toContain('--maxmemory-policy noeviction')
  })

  it('passes every ENV_VARS name to the gateway and the GPU host, wired to the compose services', () => {
    for (const name of APP_SERVICES) {
      const env = get(services[name], 'environment')
      expect(isMap(env), `${name} environment`).toBe(true)
      const missing = ENV_VARS.filter((v) => !Object.hasOwn(env as YamlMap, v))
      expect(missing, `${name} is missing`).toEqual([])
      expect(get(env, 'REDIS_URL')).toBe('redis://redis:6379')
      expect(get(env, 'DATABASE_URL')).toBe(
        `postgres://gpujobs:${TEST_SECRETS.POSTGRES_PASSWORD}@postgres:5432/gpujobs`,
      )
      expect(get(env, 'S3_ENDPOINT')).toBe('http://minio:9000')
      expect(get(env, 'MODELS_DIR')).toBe('/opt/models')
      expect(String(get(env, 'GATEWAY_HOST'))).toBe('0.0.0.0')
      // The GPU host's /metrics binds loopback unless told: Prometheus scrapes it from another container.
      expect(String(get(env, 'METRICS_HOST'))).toBe('0.0.0.0')
    }
  })

  it('mounts the Prometheus and Grafana configuration from infra/', () => {
    const prom = volumeMounts(services.prometheus)
    expect(prom.some(([src, dst]) => src.endsWith('/infra/prometheus') && dst === '/etc/prometheus')).toBe(
      true,
    )
    expect(get(services.prometheus, 'command')).toContain('--config.file=/etc/prometheus/prometheus.yml')
    const graf = volumeMounts(services.grafana)
    expect(
      graf.some(
        ([src, dst]) => src.endsWith('/infra/grafana/provisioning') && dst === '/etc/grafana/provisioning',
      ),
    ).toBe(true)
    expect(
      graf.some(
        ([src, dst]) => src.endsWith('/infra/grafana/dashboards') && dst === '/var/lib/grafana/dashboards',
      ),
    ).toBe(true)
  })

  it('builds the two images from cuda/ with the repository root as context', () => {
    expect(get(services.gateway, 'build', 'dockerfile')).toBe('cuda/Dockerfile.gateway')
    expect(get(services['gpu-host'], 'build', 'dockerfile')).toBe('cuda/Dockerfile')
    expect(get(services.gateway, 'build', 'context')).toBe(repoRoot)
  })
})
