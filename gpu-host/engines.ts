/**
 * Which engines this GPU host has: detected once at start from its engine settings, advertised in its
 * start-up log line, `/readyz` and `gpu_worker_engine_available`, and asked by the job intake, which
 * puts back the jobs for an engine the host lacks.
 */
import { constants } from 'node:fs'
import { access, stat } from 'node:fs/promises'
import path from 'node:path'
import { ENGINES, type Engine, type EngineSettings } from '../schema/engines.ts'
import { JOB_TYPES, type JobType } from '../schema/params/index.ts'

/** Per type, the engines this host can run (always `simulate`). */
export type HostEngines = Record<JobType, Engine[]>

export interface EngineDetection {
  engines: HostEngines
  /** Each real engine this host lacks, with what is missing (for the start-up line). */
  missing: Partial<Record<Engine, string>>
}

/** The files whose presence says a checkout is the engine's (the scripts the handlers launch). */
export const KOHYA_SCRIPT = 'train_network.py'
export const F5TTS_SCRIPT = path.join('src', 'f5_tts', 'train', 'finetune_cli.py')

const isFile = async (p: string): Promise<boolean> => (await stat(p).catch(() => null))?.isFile() ?? false

const isExecutable = async (p: string): Promise<boolean> =>
  (await isFile(p)) &&
  (await access(p, constants.X_OK).then(
    () => true,
    () => false,
  ))

/**
 * Where `command` resolves as the job process would run it: a name with a `/` as a path, a bare name on
 * PATH (the job process gets the host's PATH). Undefined when nothing executable is there.
 *
 * @example await resolveExecutable('python3', process.env.PATH) // '/usr/bin/python3'
 */
export async function resolveExecutable(command: string, pathVar = ''): Promise<string | undefined> {
  if (command === '') return undefined
  if (command.includes('/')) {
    const full = path.resolve(command)
    return (await isExecutable(full)) ? full : undefined
  }
  for (const dir of pathVar.split(path.delimiter)) {
    if (!dir) continue
    const full = path.join(dir, command)
    if (await isExecutable(full)) return full
  }
  return undefined
}

/** Why a checkout plus interpreter is not usable, or undefined when it is. */
async function checkoutProblem(
  dirVar: string,
  dir: string | undefined,
  script: string,
  pythonVar: string,
  python: string,
  pathVar: string | undefined,
): Promise<string | undefined> {
  if (dir === undefined) return `${dirVar} is not set`
  if (!(await isFile(path.join(dir, script)))) return `${dirVar} (${dir}) has no ${script}`
  if ((await resolveExecutable(python, pathVar)) === undefined)
    return `${pythonVar} (${python}) is not an executable${python.includes('/') ? '' : ' on PATH'}`
  return undefined
}

/**
 * Detects the engines of a host from its settings: `simulate` always; `comfyui` when COMFYUI_URL is set
 * (whether it answers is a readiness check, not a reason to stop advertising it: ComfyUI restarts, and a
 * job that meets it down retries); `kohya` when KOHYA_DIR holds train_network.py and KOHYA_PYTHON resolves
 * to an executable; `f5tts` when F5TTS_DIR holds src/f5_tts/train/finetune_cli.py and F5TTS_PYTHON resolves.
 *
 * @example const { engines } = await detectEngines(config.engines, process.env.PATH)
 */
export async function detectEngines(settings: EngineSettings, pathVar?: string): Promise<EngineDetection> {
  const missing: EngineDetection['missing'] = {}
  if (settings.comfyuiUrl === undefined) missing.comfyui = 'COMFYUI_URL is not set'
  const kohya = await checkoutProblem(
    'KOHYA_DIR',
    settings.kohyaDir,
    KOHYA_SCRIPT,
    'KOHYA_PYTHON',
    settings.kohyaPython,
    pathVar,
  )
  if (kohya) missing.kohya = kohya
  const f5tts = await checkoutProblem(
    'F5TTS_DIR',
    settings.f5ttsDir,
    F5TTS_SCRIPT,
    'F5TTS_PYTHON',
    settings.f5ttsPython,
    pathVar,
  )
  if (f5tts) missing.f5tts = f5tts
  const engines = Object.fromEntries(
    JOB_TYPES.map((type) => [
      type,
      (ENGINES[type] as readonly Engine[]).filter((engine) => !(engine in missing)),
    ]),
  ) as HostEngines
  return { engines, missing }
}

/** The start-up line: `train_lora: simulate, kohya; ... (lacking f5tts: F5TTS_DIR is not set)`. */
export function describeEngines({ engines, missing }: EngineDetection): string {
  const have = JOB_TYPES.map((type) => `${type}: ${engines[type].join(', ')}`).join('; ')
  const lacking = Object.entries(missing).map(([engine, why]) => `${engine}: ${why}`)
  return lacking.length > 0 ? `${have} (lacking ${lacking.join('; ')})` : have
}

/**
 * How long a job for an engine this host lacks stays delayed before a host looks at it again: as long
 * as it has waited so far (since it was added), between `baseMs` and `maxMs`. The re-checks thus double
 * (5 s, 10 s, 20 s, ... 60 s by default) with no state kept anywhere, and never spin: each one waits at
 * least `baseMs`.
 *
 * @example engineWaitDelay(12_000, { baseMs: 5000, maxMs: 60_000 }) // 12_000
 */
export function engineWaitDelay(
  waitedMs: number,
  { baseMs, maxMs }: { baseMs: number; maxMs: number },
): number {
  return Math.round(Math.min(maxMs, Math.max(baseMs, waitedMs)))
}

/**
 * Whether ComfyUI answers at COMFYUI_URL (`GET /system_stats`): `ok`, or why not, for `/readyz`. The
 * bound leaves room for ComfyUI's event loop, which stalls for seconds while it streams previews, and
 * still answers within a kubelet probe's 5 s (infra/k8s/gpu-host.yaml).
 */
export async function probeComfyui(url: string, timeoutMs = 3000): Promise<string> {
  try {
    const res = await fetch(new URL('system_stats', url.endsWith('/') ? url : `${url}/`), {
      signal: AbortSignal.timeout(timeoutMs),
    })
    await res.body?.cancel()
    return res.ok ? 'ok' : `ComfyUI at COMFYUI_URL answered ${res.status}`
  } catch (err) {
    const e = err as Error & { cause?: { code?: string } }
    const why = e.name === 'TimeoutError' ? `no answer in ${timeoutMs} ms` : (e.cause?.code ?? e.message)
    return `ComfyUI at COMFYUI_URL is unreachable (${why})`
  }
}
