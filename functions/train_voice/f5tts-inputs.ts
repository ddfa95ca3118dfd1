/**
 * What an F5-TTS job is given, checked before anything runs: the checkout at F5TTS_DIR, the pretrained
 * checkpoint under MODELS_DIR, and the dataset's `metadata.csv` with the clips it names.
 */
import { readFile, realpath, stat } from 'node:fs/promises'
import path from 'node:path'
import type { Dataset } from '../dataset.ts'
import { engineNotConfigured, NonRetryableError } from '../sdk/errors.ts'
import { script } from './f5tts-trainer.ts'

/** The pretrained model's vocabulary, which prepare_csv_wavs copies in fine-tune mode (relative to F5TTS_DIR). */
export const F5_PRETRAINED_VOCAB = 'data/Emilia_ZH_EN_pinyin'

export async function isFile(file: string): Promise<boolean> {
  return (await stat(file).catch(() => null))?.isFile() ?? false
}

/** F5TTS_DIR checked before anything runs: a host without it, or with a partial checkout, cannot train. */
export async function checkF5Checkout(dir: string | undefined): Promise<string> {
  if (!dir)
    throw engineNotConfigured(
      'f5tts',
      'set F5TTS_DIR to an F5-TTS checkout and F5TTS_PYTHON to the Python of its environment',
    )
  const needed = [
    script(dir, 'train', 'finetune_cli.py'),
    script(dir, 'train', 'datasets', 'prepare_csv_wavs.py'),
    path.join(dir, F5_PRETRAINED_VOCAB, 'vocab.txt'),
  ]
  for (const file of needed)
    if (!(await isFile(file)))
      throw engineNotConfigured(
        'f5tts',
        `F5TTS_DIR is not a complete F5-TTS checkout: it has no ${path.relative(dir, file)}`,
      )
  return dir
}

/**
 * Resolves `baseModel` to a file inside MODELS_DIR (symlinks resolved, so a link cannot lead out of it).
 * Non-retryable: another attempt would meet the same volume.
 */
export async function resolveBaseModel(modelsDir: string, baseModel: string): Promise<string> {
  const root = await realpath(modelsDir).catch(() => path.resolve(modelsDir))
  const wanted = path.resolve(root, baseModel)
  const inside = (p: string) => p.startsWith(root + path.sep)
  if (!inside(wanted))
    throw new NonRetryableError(`params.baseModel must name a file inside MODELS_DIR, not a path out of it`, {
      reason: 'invalid_params',
    })
  const real = await realpath(wanted).catch(() => null)
  if (real === null || !(await isFile(real)))
    throw new NonRetryableError(
      `params.baseModel "${baseModel}" is not a file in MODELS_DIR: put the pretrained F5-TTS checkpoint there (no engine downloads at job time)`,
      { reason: 'invalid_params' },
    )
  if (!inside(real))
    throw new NonRetryableError(`params.baseModel "${baseModel}" leads out of MODELS_DIR (a symlink)`, {
      reason: 'invalid_params',
    })
  return real
}

/** One clip of metadata.csv: the file (inside the dataset) and the rest of its line, as written. */
interface Clip {
  file: string
  /** Everything after the first `|`, untouched, so prepare_csv_wavs reads the text as the user wrote it. */
  rest: string
}

export const MAX_NAMED = 5

/**
 * Reads `metadata.csv` (`audio_file|text`, paths relative to the dataset folder or absolute inside it) and
 * checks that every clip is a file in the dataset: prepare_csv_wavs would skip a missing one silently.
 */
export async function readMetadata(dataset: Dataset, datasetPath: string): Promise<Clip[]> {
  const where = `dataset "${datasetPath}"`
  const csv = await readFile(path.join(dataset.dir, 'metadata.csv'), 'utf8').catch((err: unknown) => {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT')
      throw new NonRetryableError(
        `${where} has no metadata.csv: F5-TTS needs one, with the header "audio_file|text" and one "<wav file>|<text>" line per clip`,
        { reason: 'invalid_dataset' },
      )
    throw err
  })
  const lines = csv.replace(/^\uFEFF/, '').split(/\r?\n/)
  const header = (lines[0] ?? '').split('|').map((h) => h.trim())
  if (header[0] !== 'audio_file' || header[1] !== 'text')
    throw new NonRetryableError(`${where}: metadata.csv must start with the header "audio_file|text"`, {
      reason: 'invalid_dataset',
    })
  const clips: Clip[] = []
  const missing: string[] = []
  const outside: string[] = []
  for (const line of lines.slice(1)) {
    const bar = line.indexOf('|')
    const name = (bar < 0 ? line : line.slice(0, bar)).trim()
    // prepare_csv_wavs skips rows without a text column or file name, and so do we.
    if (!name || bar < 0) continue
    const file = path.resolve(dataset.dir, name)
    const real = await realpath(file).catch(() => null)
    if (real === null || !(await isFile(real))) missing.push(name)
    else if (!real.startsWith(dataset.dir + path.sep)) outside.push(name)
    else clips.push({ file: real, rest: line.slice(bar + 1) })
  }
  const list = (names: string[]) =>
    names.slice(0, MAX_NAMED).join(', ') +
    (names.length > MAX_NAMED ? ` and ${names.length - MAX_NAMED} more` : '')
  if (outside.length > 0)
    throw new NonRetryableError(`${where}: metadata.csv names files outside the dataset: ${list(outside)}`, {
      reason: 'invalid_dataset',
    })
  if (missing.length > 0)
    throw new NonRetryableError(
      `${where}: metadata.csv names audio files that are not in the dataset: ${list(missing)}`,
      { reason: 'invalid_dataset' },
    )
  if (clips.length === 0)
    throw new NonRetryableError(`${where}: metadata.csv lists no clips`, { reason: 'invalid_dataset' })
  return clips
}
