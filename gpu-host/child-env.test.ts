import { describe, expect, it } from 'vitest'
import { allowedInJobEnv, jobEnv } from './child-env.ts'

describe('the job process environment', () => {
  it.each([
    'DATABASE_URL',
    'REDIS_URL',
    'API_TOKENS',
    'METRICS_TOKEN',
    'S3_ACCESS_KEY_ID',
    'S3_SECRET_ACCESS_KEY',
    'S3_ENDPOINT',
    'DATABASE_URL_FILE',
    'API_TOKENS_FILE',
    'S3_SECRET_ACCESS_KEY_FILE',
    'HF_TOKEN',
    'HF_HUB_TOKEN',
    'CUDA_SECRET',
    'PYTHON_PASSWORD',
    'AWS_SECRET_ACCESS_KEY',
    'AWS_ACCESS_KEY_ID',
    'GITHUB_TOKEN',
    'NODE_OPTIONS',
    'LD_PRELOAD',
    'GATEWAY_PORT',
    'QUEUE_PREFIX',
  ])('never carries %s', (name) => {
    expect(allowedInJobEnv(name)).toBe(false)
  })

  it.each([
    'PATH',
    'HOME',
    'LANG',
    'LC_ALL',
    'TZ',
    'CUDA_HOME',
    'NVIDIA_VISIBLE_DEVICES',
    'LD_LIBRARY_PATH',
    'PYTHONPATH',
    'HF_HOME',
    'COMFYUI_URL',
    'KOHYA_DIR',
    'DEFAULT_ENGINE_TRAIN_LORA',
    'MODELS_DIR',
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
