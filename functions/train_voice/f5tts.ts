/**
 * The `f5tts` engine of train_voice: fine-tunes F5-TTS v1 Base on a speaker's clips with the F5-TTS
 * checkout at F5TTS_DIR (`prepare_csv_wavs.py`, then `accelerate launch finetune_cli.py --finetune`), all of
 * its files inside the job's scratch dir, and uploads `model_last.pt` and `vocab.txt`.
 */
import { mkdir, readdir, readFile, symlink, writeFile } from 'node:fs/promises'
import path from 'node:path'
import type { TrainVoiceParams } from '../../schema/params/index.ts'
import type { Dataset } from '../dataset.ts'
import type { HandlerContext } from '../sdk/context.ts'
import { engineResult } from '../sdk/define.ts'
import { type EngineProcessResult, type EngineStream, runEngineProcess } from '../sdk/engine-process.ts'
import { engineNotConfigured, NonRetryableError, RetryableError, throwIfAborted } from '../sdk/errors.ts'
import {
  checkF5Checkout,
  F5_PRETRAINED_VOCAB,
  isFile,
  MAX_NAMED,
  readMetadata,
  resolveBaseModel,
} from './f5tts-inputs.ts'
import { parseSampleCount, parseSkippedAudio, TrainingTracker } from './f5tts-progress.ts'
import {
  estimateUpdates,
  F5_DATASET_NAME,
  MAX_CLIP_SEC,
  MIN_CLIP_SEC,
  script,
  trainerArgs,
} from './f5tts-trainer.ts'

export { checkF5Checkout, F5_PRETRAINED_VOCAB, readMetadata, resolveBaseModel } from './f5tts-inputs.ts'
export {
  estimateUpdates,
  F5_DATASET_NAME,
  MAX_CLIP_SEC,
  MIN_CLIP_SEC,
  trainerArgs,
  warmupUpdates,
} from './f5tts-trainer.ts'

/** Artifact names, relative to `voices/<jobId>/`. */
export const F5_MODEL_FILE = 'model_last.pt'
export const F5_VOCAB_FILE = 'vocab.txt'
export const F5_SPEAKER_FILE = 'speaker.json'

/** A vocoder on the models volume (`config.yaml`, `pytorch_model.bin`); with it the trainer logs samples. */
export const F5_VOCODER_DIR = 'f5tts/vocos-mel-24khz'
const VOCOS_REPO = 'models--charactr--vocos-mel-24khz'

// Progress: dataset preparation, then the epochs, then the uploads.
const PREPARE_END = 5
const TRAIN_END = 95
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
