import { describe, expect, it } from 'vitest'
import { allowedInJobEnv, HOST_CREDENTIALS, jobEnv } from './child-env.ts'

describe('the job process environment', () => {
  // Each group is one reason a name is kept out or let in; together they are the whole of each rule.
  it.each([
    ...HOST_CREDENTIALS,
    // Secrets read from files.
    ...['DATABASE_URL_FILE', 'API_TOKENS_FILE', 'S3_SECRET_ACCESS_KEY_FILE'],
    // Anything that looks like a credential, on no list.
    ...['HF_TOKEN', 'HF_HUB_TOKEN', 'CUDA_SECRET', 'PYTHON_PASSWORD'],
    ...['AWS_SECRET_ACCESS_KEY', 'AWS_ACCESS_KEY_ID', 'GITHUB_TOKEN'],
    // What would change the job's runtime, and the host's own settings.
    ...['NODE_OPTIONS', 'LD_PRELOAD', 'S3_ENDPOINT', 'GATEWAY_PORT', 'QUEUE_PREFIX'],
  ])('never carries %s', (name) => {
    expect(allowedInJobEnv(name)).toBe(false)
  })

  it.each([
    // The base environment.
    ...['PATH', 'HOME', 'LANG', 'LC_ALL', 'TZ'],
    // The GPU runtime, Python and the model hubs' caches.
    ...['CUDA_HOME', 'NVIDIA_VISIBLE_DEVICES', 'LD_LIBRARY_PATH', 'PYTHONPATH', 'HF_HOME'],
    // Engine settings.
    ...['COMFYUI_URL', 'KOHYA_DIR', 'DEFAULT_ENGINE_TRAIN_LORA', 'MODELS_DIR'],
  ])('carries %s', (name) => {
    expect(allowedInJobEnv(name)).toBe(true)
  })

  it('adds the slot and job values the host sets, and drops undefined ones', () => {
    const env = jobEnv(
      { PATH: '/bin', REDIS_URL: 'redis://:pw@x', CUDA_VISIBLE_DEVICES: '3' },
      { CUDA_VISIBLE_DEVICES: '0', GPU_JOBS_JOB_ID: undefined },
    )
    expect(env).toEqual({ PATH: '/bin', CUDA_VISIBLE_DEVICES: '0' })
  })
})
