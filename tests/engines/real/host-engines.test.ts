/**
 * Engines per host against the real engines (npm run test:engines with COMFYUI_URL, KOHYA_DIR/KOHYA_PYTHON,
 * F5TTS_DIR/F5TTS_PYTHON set, e.g. `source /work/lab/env.sh`): the host detects the real checkouts and
 * interpreters, advertises them, checks the real ComfyUI for readiness, and takes a kohya job that a host
 * without kohya put back. The jobs themselves run a fixture handler: the engines' own runs are the
 * drivers' tests (tests/engines/real/*), this file is about which host takes what.
 */
import { spawnSync } from 'node:child_process'
import { randomUUID } from 'node:crypto'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { describeEngines, detectEngines } from '../../../gpu-host/engines.ts'
import type { GpuHost } from '../../../gpu-host/host.ts'
import { loadConfig } from '../../../schema/config.ts'
import { FIXTURE_DISPATCH, type Stack, startHost, startStack } from '../../helpers/stack.ts'

const env = process.env
const ENGINE_VARS = ['COMFYUI_URL', 'KOHYA_DIR', 'KOHYA_PYTHON', 'F5TTS_DIR', 'F5TTS_PYTHON'] as const
const engineEnv = Object.fromEntries(ENGINE_VARS.flatMap((n) => (env[n] ? [[n, env[n]]] : []))) as Record<
  string,
  string
>
const none = !env.COMFYUI_URL && !env.KOHYA_DIR && !env.F5TTS_DIR
const comfyuiAnswers = env.COMFYUI_URL
  ? await fetch(new URL('system_stats', `${env.COMFYUI_URL.replace(/\/$/, '')}/`), {
      signal: AbortSignal.timeout(3000),
    }).then(
      (r) => r.ok,
      () => false,
    )
  : false

/** The engine's interpreter, in its checkout and offline, imports `modules` without an error. */
function expectImports(python: string, cwd: string | undefined, modules: string): void {
  const r = spawnSync(python, ['-c', `import ${modules}`], {
    cwd,
    encoding: 'utf8',
    env: { ...env, HF_HUB_OFFLINE: '1' },
  })
  expect(r.stderr.split('\n').slice(-5).join('\n')).not.toMatch(/Error/)
  expect(r.status).toBe(0)
}

describe.skipIf(none)(
  'engines per host, against the real engines (set COMFYUI_URL, KOHYA_DIR or F5TTS_DIR)',
  () => {
    const settings = loadConfig({ ...engineEnv, MODELS_DIR: env.MODELS_DIR ?? '/tmp' }).engines

    it('detects each configured engine from its real checkout and interpreter', async () => {
      const started = performance.now()
      const found = await detectEngines(settings, env.PATH)
      console.log(`detected in ${(performance.now() - started).toFixed(1)} ms: ${describeEngines(found)}`)
      if (env.KOHYA_DIR) expect(found.engines.train_lora).toContain('kohya')
      if (env.F5TTS_DIR) expect(found.engines.train_voice).toContain('f5tts')
      if (env.COMFYUI_URL) expect(found.engines.render_video).toContain('comfyui')
    })

    // What "resolves to an executable" promises: that interpreter runs the engine's own modules.
    it.skipIf(!env.KOHYA_DIR)('KOHYA_PYTHON imports accelerate and sd-scripts in KOHYA_DIR', () => {
      expectImports(settings.kohyaPython, settings.kohyaDir, 'accelerate, library.train_util')
    })

    it.skipIf(!env.F5TTS_DIR)('F5TTS_PYTHON imports the fine-tuning CLI of F5TTS_DIR', () => {
      expectImports(settings.f5ttsPython, settings.f5ttsDir, 'f5_tts.train.finetune_cli')
    })

    describe('through the stack', () => {
      let stack: Stack
      let capable: GpuHost
      beforeAll(async () => {
        // This host has no real engine; the second one gets the real ones.
        stack = await startStack({
          handlerModules: { train_lora: FIXTURE_DISPATCH },
          engineWait: { baseMs: 500, maxMs: 2000 },
        })
        capable = await startHost(stack, { env: engineEnv, handlerModules: { train_lora: FIXTURE_DISPATCH } })
      })
      afterAll(async () => {
        await capable?.close()
        await stack?.close()
      })

      it.skipIf(!comfyuiAnswers)(
        'the host with ComfyUI is ready and says so; it advertises every real engine',
        async () => {
          const started = performance.now()
          const res = await fetch(`http://127.0.0.1:${capable.port}/readyz`)
          const body = (await res.json()) as {
            checks: Record<string, string>
            engines: Record<string, string[]>
          }
          console.log(`/readyz in ${(performance.now() - started).toFixed(0)} ms: ${JSON.stringify(body)}`)
          expect(res.status).toBe(200)
          expect(body.checks.comfyui).toBe('ok')
          expect(body.engines.render_video).toContain('comfyui')
          const metrics = await (await fetch(`http://127.0.0.1:${capable.port}/metrics`)).text()
          expect(metrics).toContain('gpu_worker_engine_available{type="render_video",engine="comfyui"} 1')
        },
      )

      it.skipIf(!env.KOHYA_DIR)(
        'a kohya job runs only on the host with the real kohya checkout',
        async () => {
          const jobs = await Promise.all(
            Array.from({ length: 3 }, async () => {
              const jobId = `real-${randomUUID().slice(0, 8)}`
              await stack.queue.add(
                'train_lora',
                { jobId, type: 'train_lora', params: { mode: 'ok', steps: 2, stepMs: 20, engine: 'kohya' } },
                { jobId },
              )
              return jobId
            }),
          )
          for (const jobId of jobs) {
            expect(await stack.waitStatus(jobId, ['completed', 'failed'], 60_000)).toMatchObject({
              status: 'completed',
              attempt: 1,
            })
            expect((await stack.attempts(jobId)).map((a) => a.host)).toEqual([capable.hostId])
          }
          // And with the capable host gone, the next one waits with what to configure.
          await capable.close()
          const jobId = `real-${randomUUID().slice(0, 8)}`
          await stack.queue.add(
            'train_lora',
            { jobId, type: 'train_lora', params: { mode: 'ok', engine: 'kohya' } },
            { jobId },
          )
          const waiting = await stack.waitJob(
            jobId,
            (body) => body.message.startsWith('waiting for a GPU host with engine kohya'),
            15_000,
            'the waiting message',
          )
          expect(waiting).toMatchObject({ status: 'queued', attempt: 0 })
        },
      )
    })
  },
)
