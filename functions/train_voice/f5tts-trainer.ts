/**
 * F5-TTS's `finetune_cli.py` command line for a job: its batching (frames per batch, the clip lengths it
 * trains on), the estimate of the run's updates and warmup, and the arguments, launched by accelerate.
 */
import { availableParallelism } from 'node:os'
import path from 'node:path'
import { type AccelerateOptions, accelerateLaunch } from '../sdk/accelerate.ts'

/** The dataset name F5-TTS is given: its data and checkpoints live in the job's own tree, so one name serves. */
export const F5_DATASET_NAME = 'voice'
// F5-TTS's fine-tune defaults (finetune_gradio.py), except the saves: see trainerArgs.
const BATCH_FRAMES = 3200
const HOP_LENGTH = 256
const SAMPLE_RATE = 24_000
/** F5-TTS's mel frames per second of audio. */
const FRAMES_PER_SECOND = SAMPLE_RATE / HOP_LENGTH
/** Periodic `model_last.pt` saves would write GBs for nothing: a retry starts in a new scratch dir. */
const NO_PERIODIC_SAVE = 1_000_000_000

/** The checkout's files this engine runs. */
export const script = (dir: string, ...rel: string[]) => path.join(dir, 'src', 'f5_tts', ...rel)

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
  const launch: AccelerateOptions = {
    // One process on the job's GPU (CUDA_VISIBLE_DEVICES).
    num_processes: 1,
    num_machines: 1,
    mixed_precision: opts.gpu ? 'fp16' : 'no',
    dynamo_backend: 'no',
    // A CPU-only run would otherwise use one core.
    ...(opts.gpu ? {} : { num_cpu_threads_per_process: availableParallelism() }),
  }
  return accelerateLaunch(
    launch,
    script(opts.f5Dir, 'train', 'finetune_cli.py'),
    [
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
    ],
    'name value',
  )
}
