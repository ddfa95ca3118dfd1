/**
 * Lays out what a host running F5-TTS has, for the tests: a fake F5-TTS checkout (F5TTS_DIR: the files the
 * handler checks for, and the pretrained vocab), a venv whose `bin/python` (F5TTS_PYTHON) is the stand-in
 * python.mjs, the pretrained checkpoint under MODELS_DIR, and a speaker dataset under DATA_DIR.
 */
import { existsSync } from 'node:fs'
import { chmod, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { encodeSafetensors, floatBytes } from '../../../functions/formats/safetensors.ts'
import { encodeWav, synthesizeVoice } from '../../../functions/formats/wav.ts'
import { DEFAULT_VOICE_BASE_MODEL } from '../../../schema/params/index.ts'

const here = path.dirname(fileURLToPath(import.meta.url))
export const STANDIN_PYTHON = path.join(here, 'python.mjs')
export const TRANSCRIPTS = path.join(here, 'transcripts')

export interface StandinOptions {
  /** Delay before each epoch-bar redraw (ms), so a test can cancel mid-run. */
  stepMs?: number
  /** The trainer crashes after this update. */
  failAt?: number
}

export interface F5Standin {
  root: string
  /** F5TTS_DIR */
  f5Dir: string
  /** F5TTS_PYTHON */
  python: string
  /** MODELS_DIR (holds the default baseModel) */
  modelsDir: string
  /** DATA_DIR (holds `speaker_ds`: metadata.csv and 3 real WAVs) */
  dataDir: string
  /** The bytes of the checkout's pretrained vocab.txt (what the job must upload). */
  vocab: Buffer
  /** One object per stand-in invocation: argv, cwd, env (PYTHON*, HF_*, CUDA_*). */
  invocations(): Promise<{ argv: string[]; cwd: string; env: Record<string, string> }[]>
  /** Every pid the stand-in started (launcher, trainer, workers...). */
  pids(): Promise<number[]>
  /** Rewrites the wrapper with other options. */
  configure(opts: StandinOptions): Promise<void>
  cleanup(): Promise<void>
}

/** F5-TTS's Emilia_ZH_EN_pinyin vocab has 2545 entries, one per line, with CRLF line ends. */
const fakeVocab = (): Buffer => {
  const entries = [' ', ...Array.from({ length: 2544 }, (_, i) => `tok${i}`)]
  return Buffer.from(entries.map((e) => `${e}\r\n`).join(''), 'utf8')
}

export async function makeF5Standin(opts: StandinOptions & { dataDir?: string; modelsDir?: string } = {}) {
  const root = await mkdtemp(path.join(tmpdir(), 'f5-standin-'))
  const f5Dir = path.join(root, 'F5-TTS')
  const dataDir = opts.dataDir ?? path.join(root, 'data')
  const modelsDir = opts.modelsDir ?? path.join(root, 'models')
  const log = path.join(root, 'invocations.jsonl')
  const pidFile = path.join(root, 'pids.txt')
  const vocab = fakeVocab()

  const placeholder = '# stand-in: the real F5-TTS file is not part of this project\n'
  for (const rel of [
    'src/f5_tts/train/finetune_cli.py',
    'src/f5_tts/train/datasets/prepare_csv_wavs.py',
    'src/f5_tts/model/trainer.py',
    'src/f5_tts/infer/utils_infer.py',
  ]) {
    await mkdir(path.dirname(path.join(f5Dir, rel)), { recursive: true })
    await writeFile(path.join(f5Dir, rel), placeholder)
  }
  await mkdir(path.join(f5Dir, 'data', 'Emilia_ZH_EN_pinyin'), { recursive: true })
  await writeFile(path.join(f5Dir, 'data', 'Emilia_ZH_EN_pinyin', 'vocab.txt'), vocab)
  await mkdir(path.join(f5Dir, 'ckpts'), { recursive: true })
  await writeFile(path.join(f5Dir, 'ckpts', 'README.md'), 'Pretrained model ckpts.\n')

  const python = path.join(root, 'venv', 'bin', 'python')
  await mkdir(path.dirname(python), { recursive: true })
  const configure = async (o: StandinOptions) => {
    const vars = {
      F5_STANDIN_SITE: path.join(f5Dir, 'src'),
      F5_STANDIN_LOG: log,
      F5_STANDIN_PIDS: pidFile,
      F5_STANDIN_STEP_MS: String(o.stepMs ?? 0),
      ...(o.failAt !== undefined ? { F5_STANDIN_FAIL_AT: String(o.failAt) } : {}),
    }
    const exports = Object.entries(vars)
      .map(([k, v]) => `${k}='${v}'`)
      .join(' ')
    await writeFile(python, `#!/bin/sh\n${exports} exec '${process.execPath}' '${STANDIN_PYTHON}' "$@"\n`)
    await chmod(python, 0o755)
  }
  await configure(opts)

  const model = path.join(modelsDir, DEFAULT_VOICE_BASE_MODEL)
  await mkdir(path.dirname(model), { recursive: true })
  const weight = floatBytes('F32', 4, (i) => i / 4)
  await writeFile(
    model,
    Buffer.concat([
      ...encodeSafetensors({ 'ema_model.transformer.w': { dtype: 'F32', shape: [4], data: weight } }),
    ]),
  )

  await writeSpeakerDataset(dataDir)

  const standin: F5Standin = {
    root,
    f5Dir,
    python,
    modelsDir,
    dataDir,
    vocab,
    invocations: async () =>
      existsSync(log)
        ? (await readFile(log, 'utf8'))
            .trim()
            .split('\n')
            .map((l) => JSON.parse(l))
        : [],
    pids: async () =>
      existsSync(pidFile)
        ? (await readFile(pidFile, 'utf8')).trim().split('\n').filter(Boolean).map(Number)
        : [],
    configure,
    cleanup: () => rm(root, { recursive: true, force: true }),
  }
  return standin
}

/** Writes `<dataDir>/speaker_ds`: metadata.csv (paths relative to the folder) and 3 real 24 kHz WAVs. */
export async function writeSpeakerDataset(dataDir: string, name = 'speaker_ds'): Promise<string> {
  const ds = path.join(dataDir, name)
  await mkdir(path.join(ds, 'wavs'), { recursive: true })
  const texts = ['Hello there, this is a test.', 'The quick brown fox.', 'One more sentence to learn from.']
  const lines = ['audio_file|text']
  for (const [i, text] of texts.entries()) {
    const file = `clip${i + 1}.wav`
    await writeFile(
      path.join(ds, 'wavs', file),
      encodeWav(synthesizeVoice({ seconds: 1 + i * 0.5, sampleRate: 24_000, seed: i }), 24_000),
    )
    lines.push(`wavs/${file}|${text}`)
  }
  await writeFile(path.join(ds, 'metadata.csv'), `${lines.join('\n')}\n`)
  return ds
}

/** Pids among `pids` that still run (a zombie counts as gone). */
export async function stillRunning(pids: readonly number[]): Promise<number[]> {
  const out: number[] = []
  for (const pid of pids) {
    const stat = await readFile(`/proc/${pid}/stat`, 'utf8').catch(() => null)
    if (stat !== null && stat.slice(stat.lastIndexOf(')') + 2)[0] !== 'Z') out.push(pid)
  }
  return out
}
