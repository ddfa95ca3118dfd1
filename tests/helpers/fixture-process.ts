import path from 'node:path'
import { fileURLToPath } from 'node:url'
import type { RunJobOptions } from '../../gpu-host/runner.ts'

/** The file of fixture handler `name` (tests/fixtures/handlers/<name>.ts). */
export const fixtureHandler = (name: string): string =>
  fileURLToPath(new URL(`../fixtures/handlers/${name}.ts`, import.meta.url))

/**
 * The options of a `JobProcess` that runs fixture handler `mode` as the first attempt of a train_lora job,
 * on no GPU, with its scratch, models and data dirs under `root` (models: `modelsDir` when given), no
 * simulated step time and a 2 s kill grace; `rest` adds to them or overrides them.
 *
 * @example
 * const proc = new JobProcess(
 *   fixtureJob('writes-artifacts', { jobId: 'j1', root, artifacts, timeoutMs: 30_000, params: { artifacts: [] } }),
 * )
 */
export function fixtureJob(
  mode: string,
  opts: {
    jobId: string
    root: string
    modelsDir?: string
    params?: Record<string, unknown>
  } & Pick<RunJobOptions, 'artifacts' | 'timeoutMs'> &
    Partial<RunJobOptions>,
): RunJobOptions {
  const { jobId, root, modelsDir = root, params, ...rest } = opts
  return {
    job: { jobId, type: 'train_lora', params: { mode, ...params }, attempt: 1 },
    gpu: { index: null, uuid: null, name: null, vramTotalMb: null },
    cudaVisibleDevices: undefined,
    paths: { scratch: path.join(root, 'scratch'), models: modelsDir, data: root },
    engines: { simulateStepMs: 0 },
    killGraceMs: 2000,
    handlerModule: fixtureHandler(mode),
    ...rest,
  }
}
