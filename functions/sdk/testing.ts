import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import path from 'node:path'
import * as v from 'valibot'
import { type EngineSettingsInput, engineSettings } from '../../schema/engines.ts'
import { describeIssues, toFieldIssues } from '../../schema/issues.ts'
import { outputPrefixFor } from '../../schema/params/index.ts'
import type { HandlerContext } from './context.ts'
import type { AnyHandler, JsonValue } from './define.ts'
import { NonRetryableError } from './errors.ts'
import { MemoryArtifactStore } from './local-artifacts.ts'
import { createModelCache, type ModelCacheOutcome, type S3ObjectFetcher } from './models.ts'

export interface RecordedProgress {
  percent: number
  message: string | undefined
  metrics?: Record<string, number>
}

export interface TestContext {
  ctx: HandlerContext
  progress: RecordedProgress[]
  logs: { level: string; msg: string }[]
  artifacts: MemoryArtifactStore
  /** Every `ctx.models.ensure` outcome, as the host's metrics would count it. */
  models: { model: string; outcome: ModelCacheOutcome; bytes: number }[]
  abort(reason?: unknown): void
  /** Removes the scratch dir. */
  cleanup(): Promise<void>
}

/**
 * A `ctx` for unit-testing a handler with no Redis, GPU or network: records progress, logs and artifacts
 * in memory.
 *
 * @example
 * const t = await createTestContext({ dataDir: fixtures, simulateStepMs: 0 })
 * const result = await runHandler(trainLora, { baseModel: 'sd15', datasetPath: 'ds' }, t)
 * expect(t.progress.at(-1)?.percent).toBe(100)
 */
export async function createTestContext(
  opts: {
    jobId?: string
    type?: HandlerContext['type']
    attempt?: number
    dataDir?: string
    modelsDir?: string
    /** Serves `s3://` model sources (a GPU host does it over IPC); without one they fail clearly. */
    s3Models?: S3ObjectFetcher
  } & Partial<EngineSettingsInput> = {},
): Promise<TestContext> {
  const jobId = opts.jobId ?? `test-${Date.now().toString(36)}`
  const type = opts.type ?? 'train_lora'
  const scratch = await mkdtemp(path.join(tmpdir(), 'gpu-job-'))
  const controller = new AbortController()
  const progress: RecordedProgress[] = []
  const logs: { level: string; msg: string }[] = []
  const artifacts = new MemoryArtifactStore(outputPrefixFor(type, jobId))
  const log =
    (level: string) =>
    (msg: string): void => {
      logs.push({ level, msg })
    }
  const modelsDir = opts.modelsDir ?? path.join(scratch, 'models')
  const models: TestContext['models'] = []
  const ctx: HandlerContext = {
    jobId,
    type,
    attempt: opts.attempt ?? 1,
    signal: controller.signal,
    progress: (percent, message, metrics) => {
      progress.push({ percent, message, ...(metrics === undefined ? {} : { metrics }) })
    },
    log: { debug: log('debug'), info: log('info'), warn: log('warn'), error: log('error') },
    artifacts,
    paths: { scratch, models: modelsDir, data: opts.dataDir ?? scratch },
    gpu: { index: null, uuid: null, name: null, vramTotalMb: null },
    models: createModelCache(modelsDir, {
      signal: controller.signal,
      ...(opts.s3Models ? { s3: opts.s3Models } : {}),
      onOutcome: (model, outcome, bytes) => {
        models.push({ model, outcome, bytes })
      },
    }),
    engines: engineSettings({
      simulateStepMs: opts.simulateStepMs ?? 0,
      comfyuiUrl: opts.comfyuiUrl,
      kohyaDir: opts.kohyaDir,
      kohyaPython: opts.kohyaPython,
      f5ttsDir: opts.f5ttsDir,
      f5ttsPython: opts.f5ttsPython,
    }),
  }
  return {
    ctx,
    progress,
    logs,
    artifacts,
    models,
    abort: (reason) => controller.abort(reason ?? new Error('aborted by test')),
    cleanup: () => rm(scratch, { recursive: true, force: true }),
  }
}

/** Validates `rawParams` with the handler's schema (as the runner does), then runs it with `t.ctx`. */
export async function runHandler(
  handler: AnyHandler,
  rawParams: unknown,
  t: TestContext,
): Promise<JsonValue> {
  const parsed = v.safeParse(handler.params, rawParams)
  if (!parsed.success)
    throw new NonRetryableError(`invalid params: ${describeIssues(toFieldIssues(parsed.issues, 'params'))}`, {
      reason: 'invalid_params',
    })
  return handler.run(
    { jobId: t.ctx.jobId, type: handler.type, params: parsed.output, attempt: t.ctx.attempt },
    t.ctx,
  )
}
