import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import path from 'node:path'
import * as v from 'valibot'
import { describe, expect, it } from 'vitest'
import { SubmitJobBody } from './api.ts'
import { JobId } from './common.ts'
import { ConfigError, loadConfig } from './config.ts'
import { ProgressEvent } from './events.ts'
import { toFieldIssues } from './issues.ts'
import { RenderVideoParams, TrainLoraParams, TrainVoiceParams } from './params/index.ts'

describe('JobId', () => {
  it.each(['abc', 'a-b_c.d', 'x'.repeat(128), '0a', 'a1b2'])('accepts %s', (id) =>
    expect(v.is(JobId, id)).toBe(true),
  )
  it.each(['', 'a:b', 'a b', 'é', 'x'.repeat(129), '12345', '0'])('refuses %j', (id) =>
    expect(v.is(JobId, id)).toBe(false),
  )
})

describe('params', () => {
  it('fills the documented defaults', () => {
    expect(v.parse(TrainLoraParams, { baseModel: 'sd15', datasetPath: 'ds' })).toEqual({
      baseModel: 'sd15',
      datasetPath: 'ds',
      epochs: 10,
      rank: 16,
      learningRate: 1e-4,
      resolution: 512,
      engine: 'simulate',
    })
    expect(v.parse(TrainVoiceParams, { speakerName: 'a', datasetPath: 'ds' })).toMatchObject({
      epochs: 10,
      language: 'en',
      engine: 'simulate',
    })
    expect(v.parse(RenderVideoParams, {})).toMatchObject({
      workflow: 'default',
      inputs: {},
      width: 512,
      height: 512,
      frames: 24,
      fps: 8,
      engine: 'simulate',
    })
  })

  it('rejects unknown keys and names the field', () => {
    const r = v.safeParse(TrainLoraParams, { baseModel: 'sd15', datasetPath: 'ds', turbo: 1 })
    expect(r.success).toBe(false)
    expect(toFieldIssues(r.issues ?? [], 'params')).toEqual([
      { path: 'params.turbo', message: 'unknown field' },
    ])
  })

  it('accepts an inline ComfyUI graph and refuses a malformed one', () => {
    const graph = { '1': { class_type: 'KSampler', inputs: { seed: 1 } } }
    expect(v.is(RenderVideoParams, { workflow: graph })).toBe(true)
    expect(v.is(RenderVideoParams, { workflow: { '1': { inputs: {} } } })).toBe(false)
    expect(v.is(RenderVideoParams, { workflow: '../etc/passwd' })).toBe(false)
  })

  it('describes problems without echoing the value', () => {
    const r = v.safeParse(SubmitJobBody, { type: 'train_lora', params: {}, priority: 'sk-secret' })
    const issues = toFieldIssues(r.issues ?? [])
    expect(issues).toEqual([{ path: 'priority', message: 'must be number' }])
    expect(JSON.stringify(issues)).not.toContain('secret')
  })
})

describe('ProgressEvent', () => {
  it('has the contract shape', () => {
    const e = {
      jobId: 'abc123',
      status: 'running',
      progress: 45.3,
      message: 'Epoch 3/5 - loss=0.34',
      timestamp: '2025-11-03T12:00:00.000Z',
      seq: 17,
      type: 'train_lora',
      attempt: 1,
    }
    expect(v.parse(ProgressEvent, e)).toEqual(e)
    expect(v.is(ProgressEvent, { ...e, progress: 101 })).toBe(false)
  })
})

describe('configuration', () => {
  it('has defaults for everything', () => {
    const c = loadConfig({})
    expect(c).toMatchObject({
      redisUrl: 'redis://127.0.0.1:6379',
      gatewayPort: 8080,
      metricsPort: 9464,
      gpuSlots: 1,
      killGraceSec: 10,
      queuePrefix: 'bull',
      engines: { simulateStepMs: 200, kohyaPython: 'python3', f5ttsPython: 'python3' },
      defaultEngines: {},
    })
    expect(c.s3.bucket).toBe('gpu-artifacts')
    expect(c.databaseUrl).toBeUndefined()
  })

  it('reports every bad value at once, without printing secrets', () => {
    let error: ConfigError | undefined
    try {
      loadConfig({
        GATEWAY_PORT: 'eighty',
        GPU_SLOTS: '0',
        DATABASE_URL: 'mysql://u:hunter2@x/db',
        LOG_LEVEL: 'loud',
        API_TOKENS: 'alice',
      })
    } catch (err) {
      error = err as ConfigError
    }
    expect(error).toBeInstanceOf(ConfigError)
    expect(error?.problems.map((p) => p.split(':')[0]).sort()).toEqual([
      'API_TOKENS',
      'DATABASE_URL',
      'GATEWAY_PORT',
      'GPU_SLOTS',
      'LOG_LEVEL',
    ])
    expect(error?.message).not.toContain('hunter2')
  })

  it('reads the engines: checkouts as absolute paths, interpreters, and DEFAULT_ENGINE_<TYPE> from each type’s engines', () => {
    const c = loadConfig({
      KOHYA_DIR: 'engines/sd-scripts',
      KOHYA_PYTHON: '/venv/bin/python',
      F5TTS_DIR: '/opt/F5-TTS',
      COMFYUI_URL: 'http://comfyui:8188',
      DEFAULT_ENGINE_TRAIN_LORA: 'kohya',
      DEFAULT_ENGINE_RENDER_VIDEO: 'comfyui',
    })
    expect(c.engines).toEqual({
      simulateStepMs: 200,
      comfyuiUrl: 'http://comfyui:8188',
      kohyaDir: path.resolve('engines/sd-scripts'),
      kohyaPython: '/venv/bin/python',
      f5ttsDir: '/opt/F5-TTS',
      f5ttsPython: 'python3',
    })
    expect(c.defaultEngines).toEqual({ train_lora: 'kohya', render_video: 'comfyui' })
    expect(() => loadConfig({ DEFAULT_ENGINE_TRAIN_VOICE: 'kohya' })).toThrow(
      /DEFAULT_ENGINE_TRAIN_VOICE: must be one of simulate, f5tts/,
    )
  })

  it('refuses tokens under 16 characters and names with a "." (ids are scoped as <name>.<jobId>)', () => {
    expect(() => loadConfig({ API_TOKENS: 'alice:sixteen-chars-xx' })).not.toThrow()
    expect(() => loadConfig({ API_TOKENS: 'alice:fifteen-chars-x' })).toThrow(/at least 16 characters/)
    expect(() => loadConfig({ API_TOKENS: 'a.b:sixteen-chars-xx' })).toThrow(/API_TOKENS/)
  })

  it('reads ALLOWED_ORIGINS as origins and the quotas as bounded integers', () => {
    const c = loadConfig({ ALLOWED_ORIGINS: 'https://a.example.com, http://localhost:3000' })
    expect([...c.allowedOrigins]).toEqual(['https://a.example.com', 'http://localhost:3000'])
    expect(c.maxQueuedJobsPerToken).toBe(1000)
    expect(c.maxParamsBytes).toBe(65536)
    for (const bad of ['a.example.com', 'https://a.example.com/path', 'ftp://x', '*'])
      expect(() => loadConfig({ ALLOWED_ORIGINS: bad }), bad).toThrow(/ALLOWED_ORIGINS/)
    expect(() => loadConfig({ MAX_PARAMS_BYTES: '10' })).toThrow(/MAX_PARAMS_BYTES/)
    expect(() => loadConfig({ MAX_QUEUED_JOBS_PER_TOKEN: '0' })).toThrow(/MAX_QUEUED_JOBS_PER_TOKEN/)
  })

  it('reads secrets from NAME_FILE and tokens as name:token pairs', async () => {
    const dir = await mkdtemp(path.join(tmpdir(), 'cfg-'))
    await writeFile(path.join(dir, 'tokens'), 'alice:tokenAAAA1-16chars,bob:tokenBBBB2-16chars\n')
    try {
      const c = loadConfig({ API_TOKENS_FILE: path.join(dir, 'tokens') })
      expect([...c.apiTokens.entries()]).toEqual([
        ['alice', 'tokenAAAA1-16chars'],
        ['bob', 'tokenBBBB2-16chars'],
      ])
      expect(() => loadConfig({ API_TOKENS_FILE: path.join(dir, 'missing') })).toThrow(
        /API_TOKENS_FILE: cannot read/,
      )
    } finally {
      await rm(dir, { recursive: true, force: true })
    }
  })

  it('accepts a Redis Cluster hash tag as the queue prefix', () => {
    expect(loadConfig({ QUEUE_PREFIX: '{gpu-jobs}' }).queuePrefix).toBe('{gpu-jobs}')
    expect(() => loadConfig({ QUEUE_PREFIX: 'a:b' })).toThrow(/QUEUE_PREFIX/)
  })
})

describe('readable log lines', () => {
  it('turns a pino JSON line into one readable line with its fields', async () => {
    const { prettyLine } = await import('./runtime.ts')
    const line = prettyLine(
      JSON.stringify({
        level: 40,
        time: Date.UTC(2026, 0, 1, 12, 0, 1, 234),
        pid: 1,
        name: 'gpu-jobs',
        component: 'gpu-host',
        jobId: 'a1',
        msg: 'job failed',
      }),
    )
    expect(line).toBe('12:00:01.234 WARN  [gpu-host] job failed  jobId=a1\n')
    expect(() => loadConfig({ LOG_FORMAT: 'xml' })).toThrow(/LOG_FORMAT/)
  })
})
