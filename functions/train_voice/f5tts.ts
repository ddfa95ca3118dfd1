/**
 * The `f5tts` engine of train_voice: fine-tunes F5-TTS v1 Base on a speaker's clips with the F5-TTS
 * checkout at F5TTS_DIR (`prepare_csv_wavs.py`, then `accelerate launch finetune_cli.py --finetune`), all of
 * its files inside the job's scratch dir, and uploads `model_last.pt` and `vocab.txt`.
 */
import { mkdir, readdir, readFile, realpath, stat, symlink, writeFile } from 'node:fs/promises'
import { availableParallelism } from 'node:os'
import path from 'node:path'
import type { TrainVoiceParams } from '../../schema/params/index.ts'
import type { Dataset } from '../dataset.ts'
import type { HandlerContext } from '../sdk/context.ts'
import { engineResult } from '../sdk/define.ts'
import { type EngineProcessResult, type EngineStream, runEngineProcess } from '../sdk/engine-process.ts'
import { engineNotConfigured, NonRetryableError, RetryableError, throwIfAborted } from '../sdk/errors.ts'
import { parseSampleCount, parseSkippedAudio, TrainingTracker } from './f5tts-progress.ts'

/** Artifact names, relative to `voices/<jobId>/`. */
export const F5_MODEL_FILE = 'model_last.pt'
export const F5_VOCAB_FILE = 'vocab.txt'
export const F5_SPEAKER_FILE = 'speaker.json'

/** The dataset name F5-TTS is given: its data and checkpoints live in the job's own tree, so one name serves. */
export const F5_DATASET_NAME = 'voice'
/** The pretrained model's vocabulary, which prepare_csv_wavs copies in fine-tune mode (relative to F5TTS_DIR). */
export const F5_PRETRAINED_VOCAB = 'data/Emilia_ZH_EN_pinyin'
/** A vocoder on the models volume (`config.yaml`, `pytorch_model.bin`); with it the trainer logs samples. */
export const F5_VOCODER_DIR = 'f5tts/vocos-mel-24khz'
const VOCOS_REPO = 'models--charactr--vocos-mel-24khz'

// Progress: dataset preparation, then the epochs, then the uploads.
const PREPARE_END = 5
const TRAIN_END = 95
// F5-TTS's fine-tune defaults (finetune_gradio.py), except the saves: see trainerArgs.
const BATCH_FRAMES = 3200
const HOP_LENGTH = 256
const SAMPLE_RATE = 24_000
/** F5-TTS's mel frames per second of audio. */
const FRAMES_PER_SECOND = SAMPLE_RATE / HOP_LENGTH
/** Periodic `model_last.pt` saves would write GBs for nothing: a retry starts in a new scratch dir. */
const NO_PERIODIC_SAVE = 1_000_000_000

/** The checkout's files this engine runs. */
const script = (dir: string, ...rel: string[]) => path.join(dir, 'src', 'f5_tts', ...rel)

async function isFile(file: string): Promise<boolean> {
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

const MAX_NAMED = 5

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

/**
 * F5-TTS finds its `data/` and `ckpts/` at `files("f5_tts")/../../`, i.e. beside the `src/` it was imported
 * from: the shared checkout. So the job gets a tree of its own, `<root>/src/f5_tts/*` linking to the
 * checkout's modules, put first on PYTHONPATH. `f5_tts` (a namespace package) then resolves to that folder
 * first, and `../../` is `<root>`, in the job's scratch dir. The folder itself must be real, not a link:
 * `..` through a link would lead back into the checkout.
 */
async function makeJobTree(
  f5Dir: string,
  root: string,
  model: string,
): Promise<{ ckpts: string; data: string }> {
  const pkg = path.join(root, 'src', 'f5_tts')
  await mkdir(pkg, { recursive: true })
  const source = script(f5Dir)
  for (const entry of await readdir(source)) await symlink(path.join(source, entry), path.join(pkg, entry))
  await mkdir(path.join(root, 'data'), { recursive: true })
  await symlink(path.join(f5Dir, F5_PRETRAINED_VOCAB), path.join(root, F5_PRETRAINED_VOCAB))
  const ckpts = path.join(root, 'ckpts', F5_DATASET_NAME)
  await mkdir(ckpts, { recursive: true })
  // finetune_cli copies the pretrained checkpoint (GBs) to ckpts/<name>/pretrained_<file> unless that exists:
  // a link serves (the trainer only reads it).
  const base = path.basename(model)
  await symlink(model, path.join(ckpts, base.startsWith('pretrained_') ? base : `pretrained_${base}`))
  return { ckpts, data: path.join(root, 'data', `${F5_DATASET_NAME}_pinyin`) }
}

/**
 * finetune_cli's vocoder comes from the hub cache (`charactr/vocos-mel-24khz`; it passes no local path),
 * so a vocoder on the models volume is offered as an offline cache of that repo in the job's tree.
 * Returns the cache folder, or null when the volume has none (then no samples are logged).
 */
async function vocoderCache(modelsDir: string, root: string): Promise<string | null> {
  const dir = path.join(modelsDir, F5_VOCODER_DIR)
  const files = ['config.yaml', 'pytorch_model.bin']
  for (const f of files) if (!(await isFile(path.join(dir, f)))) return null
  const cache = path.join(root, 'hf-hub')
  const revision = 'models-volume'
  const snapshot = path.join(cache, VOCOS_REPO, 'snapshots', revision)
  await mkdir(snapshot, { recursive: true })
  await mkdir(path.join(cache, VOCOS_REPO, 'refs'), { recursive: true })
  await writeFile(path.join(cache, VOCOS_REPO, 'refs', 'main'), revision)
  for (const f of files) await symlink(path.join(dir, f), path.join(snapshot, f))
  return cache
}

/**
 * A lower bound of the run's updates: F5-TTS's DynamicBatchSampler packs clips (in mel frames) into batches
 * of at most 3200 frames and leaves out a clip longer than that, so an epoch has at least
 * `ceil(frames / 3200)` batches.
 */
export function estimateUpdates(durationsSec: readonly number[], epochs: number): number {
  const frames = durationsSec
    .map((d) => d * FRAMES_PER_SECOND)
    .filter((f) => f <= BATCH_FRAMES)
    .reduce((s, f) => s + f, 0)
  return epochs * Math.max(1, Math.ceil(frames / BATCH_FRAMES))
}

/**
 * LR warmup updates: 5% of the run as F5-TTS's Gradio UI sets it, at most its 100. The Trainer's schedule
 * decays over `updates - warmup` steps and divides by that number (torch LinearLR), so it must stay at
 * least 1: with a one-update run, no warmup at all (measured on the real F5-TTS: warmup 1 of 1 update is a
 * ZeroDivisionError at the first step).
 */
export const warmupUpdates = (estimatedUpdates: number): number =>
  estimatedUpdates < 2
    ? 0
    : Math.max(1, Math.min(100, estimatedUpdates - 1, Math.floor(estimatedUpdates * 0.05)))

/** F5-TTS's CustomDataset replaces a clip outside 0.3-30 s by the next one: with no clip inside, it loops forever. */
export const MIN_CLIP_SEC = 0.3
export const MAX_CLIP_SEC = 30

/** The finetune_cli arguments for a job. */
export function trainerArgs(opts: {
  f5Dir: string
  model: string
  epochs: number
  estimatedUpdates: number
  gpu: boolean
  logSamples: boolean
}): string[] {
  const warmup = warmupUpdates(opts.estimatedUpdates)
  return [
    '-m',
    'accelerate.commands.launch',
    // One process on the job's GPU (CUDA_VISIBLE_DEVICES), given explicitly so accelerate asks nothing.
    '--num_processes',
    '1',
    '--num_machines',
    '1',
    '--mixed_precision',
    opts.gpu ? 'fp16' : 'no',
    '--dynamo_backend',
    'no',
    // Without it accelerate sets OMP_NUM_THREADS=1: a CPU-only run would use one core.
    ...(opts.gpu ? [] : ['--num_cpu_threads_per_process', String(availableParallelism())]),
    script(opts.f5Dir, 'train', 'finetune_cli.py'),
    '--exp_name',
    'F5TTS_v1_Base',
    '--dataset_name',
    F5_DATASET_NAME,
    '--tokenizer',
    'pinyin',
    '--finetune',
    '--pretrain',
    opts.model,
    '--learning_rate',
    '1e-5',
    '--batch_size_per_gpu',
    String(BATCH_FRAMES),
    '--batch_size_type',
    'frame',
    '--max_samples',
    '64',
    '--grad_accumulation_steps',
    '1',
    '--max_grad_norm',
    '1.0',
    '--epochs',
    String(opts.epochs),
    '--num_warmup_updates',
    String(warmup),
    // Samples are drawn every save_per_updates; intermediate checkpoints are not kept (0).
    '--save_per_updates',
    String(Math.max(1, Math.min(500, opts.estimatedUpdates))),
    '--keep_last_n_checkpoints',
    '0',
    '--last_per_updates',
    String(NO_PERIODIC_SAVE),
    ...(opts.logSamples ? ['--log_samples'] : []),
  ]
}

/** The error of a command that did not exit 0: how it ended and the last lines of its stderr. */
function engineFailure(what: string, run: EngineProcessResult): RetryableError {
  const how =
    run.signal !== null
      ? `was killed by ${run.signal}${run.signal === 'SIGKILL' ? ' (out of memory?)' : ''}`
      : `exited with code ${run.exitCode}`
  const tail = run.tail.join('\n')
  return new RetryableError(`F5-TTS ${what} ${how}; last stderr lines:\n${tail.slice(-16_000)}`, {
    reason: 'handler_error',
    code: 'ENGINE_FAILED',
  })
}

/** Runs an F5-TTS fine-tune for the job and stores its checkpoint and vocabulary. */
export async function trainWithF5tts(p: TrainVoiceParams, dataset: Dataset, ctx: HandlerContext) {
  const f5Dir = await checkF5Checkout(ctx.engines.f5ttsDir)
  const python = ctx.engines.f5ttsPython
  const model = await resolveBaseModel(ctx.paths.models, p.baseModel)
  const clips = await readMetadata(dataset, p.datasetPath)

  const root = path.join(ctx.paths.scratch, 'f5tts')
  const { ckpts, data } = await makeJobTree(f5Dir, root, model)
  const hfCache = await vocoderCache(ctx.paths.models, root)
  const metadata = path.join(root, 'metadata.csv')
  // prepare_csv_wavs wants absolute audio paths.
  await writeFile(metadata, `audio_file|text\n${clips.map((c) => `${c.file}|${c.rest}`).join('\n')}\n`)

  const env = {
    PYTHONPATH: [path.join(root, 'src'), process.env.PYTHONPATH].filter(Boolean).join(path.delimiter),
    // Lines such as "Saved last checkpoint" arrive when printed, not when a pipe buffer fills.
    PYTHONUNBUFFERED: '1',
    // No hub at job time: the pretrained checkpoint is a local file, and so is the vocoder when there is one.
    HF_HUB_OFFLINE: '1',
    HF_DATASETS_OFFLINE: '1',
    ...(hfCache ? { HF_HUB_CACHE: hfCache } : {}),
  }
  const run = async (
    args: string[],
    onLine: (stream: EngineStream, line: string) => void,
    onPartial?: (stream: EngineStream, text: string) => void,
  ) => {
    const result = await runEngineProcess({
      command: python,
      args,
      cwd: root,
      env,
      signal: ctx.signal,
      onLine,
      ...(onPartial ? { onPartial } : {}),
    }).catch((err: unknown) => {
      const code = (err as NodeJS.ErrnoException).code
      if (code === 'ENOENT' || code === 'EACCES')
        throw engineNotConfigured(
          'f5tts',
          `F5TTS_PYTHON cannot be run (${code}): point it at the Python of F5-TTS's environment`,
        )
      throw err
    })
    // Stopped by cancel, timeout or shutdown: the whole tree is gone by now.
    if (result.aborted) throwIfAborted(ctx.signal)
    return result
  }

  ctx.progress(0, `preparing ${clips.length} clips with F5-TTS prepare_csv_wavs`)
  let samples: number | undefined
  const skipped: string[] = []
  const prepared = await run(
    [script(f5Dir, 'train', 'datasets', 'prepare_csv_wavs.py'), metadata, data],
    (_stream, line) => {
      samples = parseSampleCount(line) ?? samples
      const skip = parseSkippedAudio(line)
      if (skip) skipped.push(path.relative(dataset.dir, skip))
    },
  )
  if (prepared.exitCode !== 0 || prepared.signal !== null) {
    if (prepared.tail.some((l) => l.includes('No valid audio files were processed')) || skipped.length > 0)
      throw new NonRetryableError(
        `dataset "${p.datasetPath}": F5-TTS could not read its audio files (${skipped.slice(0, MAX_NAMED).join(', ') || 'none usable'})`,
        { reason: 'invalid_dataset' },
      )
    throw engineFailure('prepare_csv_wavs', prepared)
  }
  if (skipped.length > 0)
    throw new NonRetryableError(
      `dataset "${p.datasetPath}": F5-TTS could not read ${skipped.length} audio file(s): ${skipped.slice(0, MAX_NAMED).join(', ')}`,
      { reason: 'invalid_dataset' },
    )
  const durations = await readFile(path.join(data, 'duration.json'), 'utf8')
    .then((s) => (JSON.parse(s) as { duration: number[] }).duration)
    .catch(() => {
      throw new RetryableError('F5-TTS prepare_csv_wavs wrote no readable duration.json', {
        code: 'ENGINE_FAILED',
      })
    })
  if (!durations.some((d) => d >= MIN_CLIP_SEC && d <= MAX_CLIP_SEC))
    throw new NonRetryableError(
      `dataset "${p.datasetPath}": no clip is between ${MIN_CLIP_SEC} and ${MAX_CLIP_SEC} seconds long, the lengths F5-TTS trains on`,
      { reason: 'invalid_dataset' },
    )
  throwIfAborted(ctx.signal)

  const estimatedUpdates = estimateUpdates(durations, p.epochs)
  ctx.progress(
    PREPARE_END,
    `fine-tuning F5TTS_v1_Base on ${samples ?? clips.length} clips, ${p.epochs} epochs`,
  )
  const tracker = new TrainingTracker({ from: PREPARE_END, to: TRAIN_END }, p.epochs)
  const args = trainerArgs({
    f5Dir,
    model,
    epochs: p.epochs,
    estimatedUpdates,
    gpu: ctx.gpu.index !== null,
    logSamples: hfCache !== null,
  })
  const follow = (_stream: EngineStream, line: string) => {
    const report = tracker.line(line)
    if (report) ctx.progress(report.percent, report.message)
  }
  // tqdm ends a redraw only with the next one's `\r`: the partial line is the bar as drawn now (the tracker
  // ignores a redraw it has seen, and a partial that is not a whole bar yet).
  const trained = await run(args, follow, follow)
  if (trained.exitCode !== 0 || trained.signal !== null) throw engineFailure('finetune_cli', trained)

  const checkpoint = path.join(ckpts, F5_MODEL_FILE)
  const vocab = path.join(data, 'vocab.txt')
  for (const file of [checkpoint, vocab])
    if (!(await isFile(file)))
      throw new RetryableError(`F5-TTS finished without writing ${path.relative(root, file)}`, {
        code: 'ENGINE_FAILED',
      })
  throwIfAborted(ctx.signal)

  ctx.progress(TRAIN_END, `uploading ${F5_MODEL_FILE} (update ${tracker.savedUpdate ?? tracker.update})`)
  // Streamed from disk: the checkpoint is GBs.
  await ctx.artifacts.put(F5_MODEL_FILE, { file: checkpoint }, { contentType: 'application/octet-stream' })
  await ctx.artifacts.put(F5_VOCAB_FILE, { file: vocab }, { contentType: 'text/plain; charset=utf-8' })
  const files = [F5_MODEL_FILE, F5_VOCAB_FILE]
  const sampleDir = path.join(ckpts, 'samples')
  const sampleFiles = (await readdir(sampleDir).catch(() => [] as string[]))
    .filter((f) => f.endsWith('.wav'))
    .sort()
  for (const f of sampleFiles) {
    await ctx.artifacts.put(`samples/${f}`, { file: path.join(sampleDir, f) }, { contentType: 'audio/wav' })
    files.push(`samples/${f}`)
  }
  const finalLoss = tracker.loss === undefined ? null : Number(tracker.loss)
  const updates = tracker.savedUpdate ?? tracker.update
  const speaker = {
    speakerName: p.speakerName,
    language: p.language,
    baseModel: p.baseModel,
    checkpoint: F5_MODEL_FILE,
    vocab: F5_VOCAB_FILE,
    tokenizer: 'pinyin',
    epochs: p.epochs,
    updates,
    finalLoss: Number.isFinite(finalLoss) ? finalLoss : null,
    engine: 'f5tts',
    simulated: false,
  }
  await ctx.artifacts.put(F5_SPEAKER_FILE, `${JSON.stringify(speaker, null, 2)}\n`)
  files.push(F5_SPEAKER_FILE)
  ctx.progress(100, `voice model saved: ${F5_MODEL_FILE} at update ${updates}`)

  return {
    ...engineResult('f5tts', files),
    speakerName: p.speakerName,
    language: p.language,
    baseModel: p.baseModel,
    epochs: p.epochs,
    updates,
    finalLoss: speaker.finalLoss,
    clips: samples ?? clips.length,
    vocabSize: tracker.vocabSize ?? null,
    samplesLogged: hfCache !== null,
    datasetFiles: dataset.files,
  }
}
