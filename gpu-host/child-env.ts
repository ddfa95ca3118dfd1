/**
 * The environment of a job process: an allow-list of what a job needs (system basics, CUDA and NVIDIA
 * runtime, the engines' settings and interpreters), never the host's credentials. A job runs code we do
 * not fully control (user params, third-party engines), and anything in its environment can end up in
 * its logs, its outputs or /proc/<pid>/environ; artifacts go through the host, so it needs no secret.
 */

/** Exact names a job may see. */
const ALLOWED_NAMES = new Set([
  'PATH',
  'HOME',
  'USER',
  'LOGNAME',
  'SHELL',
  'LANG',
  'LANGUAGE',
  'TZ',
  'TMPDIR',
  'TERM',
  'NODE_ENV',
  'NODE_EXTRA_CA_CERTS',
  'LD_LIBRARY_PATH',
  'DATA_DIR',
  'MODELS_DIR',
  'SIMULATE_STEP_MS',
  'COMFYUI_URL',
  'KOHYA_DIR',
  'KOHYA_PYTHON',
  'F5TTS_DIR',
  'F5TTS_PYTHON',
  'GPU_JOBS_BIN',
  'GPU_JOBS_CHILD_ENTRY',
  'OMP_NUM_THREADS',
  'MKL_NUM_THREADS',
  'PYTORCH_CUDA_ALLOC_CONF',
  'TRANSFORMERS_OFFLINE',
  'XDG_CACHE_HOME',
])

/** Name prefixes a job may see (CUDA, NVIDIA runtime, locale, Python and model-hub caches, engine choice). */
const ALLOWED_PREFIXES = ['LC_', 'CUDA_', 'NVIDIA_', 'PYTHON', 'HF_', 'TORCH_', 'DEFAULT_ENGINE_']

/** The host's own credentials, by name: never in a job process's environment. */
export const HOST_CREDENTIALS = [
  'DATABASE_URL',
  'REDIS_URL',
  'API_TOKENS',
  'METRICS_TOKEN',
  'S3_ACCESS_KEY_ID',
  'S3_SECRET_ACCESS_KEY',
] as const

/**
 * Never passed, whatever the allow-list says: the host's credentials by name, secrets read from files
 * (`*_FILE`), and anything that looks like a credential (`HF_TOKEN`, `*_SECRET*`, `*_PASSWORD`, ...).
 */
const DENIED_NAMES = new Set<string>(HOST_CREDENTIALS)
const DENIED_PATTERN = /_FILE$|TOKEN|SECRET|PASSW|CREDENTIAL|PRIVATE|_KEY$|_KEY_ID$|AUTH/i

/** Whether a variable of the host's environment may reach a job process. */
export function allowedInJobEnv(name: string): boolean {
  if (DENIED_NAMES.has(name) || DENIED_PATTERN.test(name)) return false
  return ALLOWED_NAMES.has(name) || ALLOWED_PREFIXES.some((p) => name.startsWith(p))
}

/**
 * The environment for a job process: the allowed part of `base` (the host's), then `extra` (the slot's
 * CUDA_VISIBLE_DEVICES, the job id), which the caller controls.
 *
 * @example
 * jobEnv(process.env, { CUDA_VISIBLE_DEVICES: '0' }) // no DATABASE_URL, REDIS_URL, S3 keys, tokens
 */
export function jobEnv(
  base: NodeJS.ProcessEnv,
  extra: Record<string, string | undefined> = {},
): Record<string, string> {
  const env: Record<string, string> = {}
  for (const [name, value] of Object.entries(base))
    if (value !== undefined && allowedInJobEnv(name)) env[name] = value
  for (const [name, value] of Object.entries(extra)) if (value !== undefined) env[name] = value
  return env
}
