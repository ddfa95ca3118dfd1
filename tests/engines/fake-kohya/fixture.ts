/**
 * A throw-away kohya install for tests: KOHYA_DIR (the stand-in train_network.py and a stand-in.json
 * scenario), KOHYA_PYTHON (./python) and a MODELS_DIR with a Diffusers-shaped model and the tokenizer cache.
 */
import { copyFile, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import path from 'node:path'
import type { Scenario } from './stand-in.ts'

export const KOHYA_PYTHON = path.join(import.meta.dirname, 'python')
const TRAIN_NETWORK = path.join(import.meta.dirname, 'sd-scripts', 'train_network.py')

export interface RecordedCall {
  role: 'launcher' | 'trainer'
  pid: number
  pgid: number
  argv: string[]
  env: Record<string, string>
  cwd: string
}

export interface KohyaFixture {
  root: string
  kohyaDir: string
  modelsDir: string
  /** The model `baseModel: 'tiny-sd15'` names. */
  model: string
  recordFile: string
  setScenario(s: Omit<Scenario, 'recordFile'>): Promise<void>
  /** What each stand-in process recorded, in start order. */
  calls(): Promise<RecordedCall[]>
  cleanup(): Promise<void>
}

export async function makeKohyaFixture(scenario: Omit<Scenario, 'recordFile'> = {}): Promise<KohyaFixture> {
  const root = await mkdtemp(path.join(tmpdir(), 'fake-kohya-'))
  const kohyaDir = path.join(root, 'sd-scripts')
  const modelsDir = path.join(root, 'models')
  const model = path.join(modelsDir, 'tiny-sd15')
  const recordFile = path.join(root, 'calls.jsonl')
  await mkdir(kohyaDir, { recursive: true })
  await mkdir(path.join(model, 'unet'), { recursive: true })
  await mkdir(path.join(modelsDir, 'kohya', 'tokenizers', 'openai_clip-vit-large-patch14'), {
    recursive: true,
  })
  await copyFile(TRAIN_NETWORK, path.join(kohyaDir, 'train_network.py'))
  await writeFile(path.join(model, 'model_index.json'), '{"_class_name": "StableDiffusionPipeline"}\n')
  const setScenario = (s: Omit<Scenario, 'recordFile'>) =>
    writeFile(path.join(kohyaDir, 'stand-in.json'), JSON.stringify({ ...s, recordFile }))
  await setScenario(scenario)
  return {
    root,
    kohyaDir,
    modelsDir,
    model,
    recordFile,
    setScenario,
    calls: async () =>
      (await readFile(recordFile, 'utf8').catch(() => ''))
        .split('\n')
        .filter(Boolean)
        .map((l) => JSON.parse(l) as RecordedCall),
    cleanup: () => rm(root, { recursive: true, force: true }),
  }
}
