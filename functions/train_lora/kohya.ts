/**
 * The `kohya` engine of train_lora: runs kohya sd-scripts' `train_network.py` (through `accelerate launch`)
 * on a job's dataset and base model, reports its progress and stores the LoRA it writes.
 */
import type { Dirent } from 'node:fs'
import { lstat, mkdir, open, readdir, realpath, stat, writeFile } from 'node:fs/promises'
import path from 'node:path'
import type { TrainLoraParams } from '../../schema/params/index.ts'
import type { Dataset } from '../dataset.ts'
import { accelerateLaunch } from '../sdk/accelerate.ts'
import type { HandlerContext } from '../sdk/context.ts'
import { engineResult } from '../sdk/define.ts'
import { type EngineProcessResult, type EngineStream, runEngineProcess } from '../sdk/engine-process.ts'
import { engineNotConfigured, NonRetryableError, RetryableError, throwIfAborted } from '../sdk/errors.ts'
import { KohyaProgress } from './kohya-progress.ts'
import { CONFIG_FILE, IMAGE_EXTENSIONS, LORA_FILE, loraSummary, NETWORK_ALPHA } from './outputs.ts'

/** kohya's `--output_name`: the trainer writes `<output_dir>/lora.safetensors`. */
export const OUTPUT_NAME = 'lora'
/** The tokenizer cache on the models volume, relative to MODELS_DIR (`--tokenizer_cache_dir`). */
export const TOKENIZER_CACHE = 'kohya/tokenizers'
/** What train_network.py (SD1.x) loads from the cache: `strategy_sd.py` names the folder after the hub id. */
const SD1_TOKENIZER = 'openai_clip-vit-large-patch14'
/** How many stderr lines a failed run keeps in the job's error. */
const TAIL_LINES = 100
/** A tail line longer than this is cut in the error message (rich logging, a tensor dump). */
const TAIL_LINE_CHARS = 1000

const codeOf = (err: unknown): string | undefined => (err as NodeJS.ErrnoException | undefined)?.code

const inside = (root: string, candidate: string): boolean => {
  const rel = path.relative(root, candidate)
  return rel !== '' && !rel.startsWith('..') && !path.isAbsolute(rel)
}

/** The engine's paths, checked: an sd-scripts checkout with train_network.py and its Python. */
export async function kohyaInstall(
  ctx: HandlerContext,
): Promise<{ dir: string; python: string; script: string }> {
  const dir = ctx.engines.kohyaDir
  if (!dir)
    throw engineNotConfigured(
      'kohya',
      'set KOHYA_DIR to a kohya-ss/sd-scripts checkout (and KOHYA_PYTHON to its Python)',
    )
  const script = path.join(dir, 'train_network.py')
  const found = await stat(script).catch(() => null)
  if (!found?.isFile())
    throw engineNotConfigured(
      'kohya',
      'KOHYA_DIR has no train_network.py: point it at a kohya-ss/sd-scripts checkout',
    )
  return { dir, python: ctx.engines.kohyaPython, script }
}

/**
 * Resolves `baseModel` inside MODELS_DIR: a `.safetensors`/`.ckpt` file or a Diffusers folder
 * (`model_index.json`). Refuses, before anything is read, a name that leaves MODELS_DIR (`..`, an absolute
 * path, a symlink that points out); messages name the param and MODELS_DIR, never an absolute path.
 */
export async function resolveBaseModel(modelsDir: string, baseModel: string): Promise<string> {
  const refuse = (why: string) =>
    new NonRetryableError(`params.baseModel ${why}`, { reason: 'invalid_params' })
  if (baseModel.includes('\0')) throw refuse('must not contain NUL bytes')
  if (path.isAbsolute(baseModel) || baseModel.includes('\\'))
    throw refuse('must be a name relative to MODELS_DIR, not an absolute path')
  const segments = baseModel.split('/')
  if (segments.some((s) => s === '..')) throw refuse('must not contain ".." (it must stay inside MODELS_DIR)')
  const root = await realpath(modelsDir).catch(() => path.resolve(modelsDir))
  const lexical = path.resolve(root, baseModel)
  if (!inside(root, lexical)) throw refuse('must name a model inside MODELS_DIR')
  let real: string
  try {
    real = await realpath(lexical)
  } catch (err) {
    if (codeOf(err) === 'ENOENT' || codeOf(err) === 'ENOTDIR')
      throw new NonRetryableError(
        `params.baseModel "${baseModel}" was not found in MODELS_DIR: put the model there (a .safetensors or .ckpt file, or a Diffusers folder)`,
        { reason: 'invalid_params', cause: err },
      )
    throw err
  }
  if (!inside(root, real)) throw refuse('must not be a symlink that leaves MODELS_DIR')
  const info = await stat(real)
  if (info.isFile()) {
    if (!/\.(safetensors|ckpt)$/i.test(real))
      throw refuse(`"${baseModel}" must be a .safetensors or .ckpt file, or a Diffusers folder`)
  } else if (info.isDirectory()) {
    const index = await stat(path.join(real, 'model_index.json')).catch(() => null)
    if (!index?.isFile())
      throw refuse(`"${baseModel}" is a folder without model_index.json: it is not a Diffusers model`)
  } else throw refuse(`"${baseModel}" is neither a file nor a folder`)
  return real
}

/** One `[[datasets.subsets]]` of kohya's dataset config. */
export interface KohyaSubset {
  imageDir: string
  numRepeats: number
  classTokens?: string
  images: number
}

/**
 * The dataset's subsets, as kohya's own `--train_data_dir` reading makes them (config_util
 * `generate_dreambooth_subsets_config_by_subdirs`): each `<repeats>_<class tokens>` subfolder is a subset
 * with those repeats and tokens; images right in the dataset folder make one more, repeated once. Folders
 * without a number prefix are skipped, as kohya skips them. Symlinked images are refused: the trainer
 * would follow them out of DATA_DIR.
 */
export async function datasetSubsets(dataset: Dataset, datasetPath: string): Promise<KohyaSubset[]> {
  const where = `dataset "${datasetPath}"`
  const countImages = async (dir: string): Promise<number> => {
    const entries = await readdir(dir, { withFileTypes: true })
    let images = 0
    for (const e of entries) {
      if (!IMAGE_EXTENSIONS.includes(path.extname(e.name).toLowerCase())) continue
      if (e.isSymbolicLink())
        throw new NonRetryableError(
          `${where} holds a symlinked image (${e.name}): copy the file in instead`,
          {
            reason: 'invalid_dataset',
          },
        )
      if (e.isFile()) images++
    }
    return images
  }
  const subsets: KohyaSubset[] = []
  const top = await countImages(dataset.dir)
  if (top > 0) subsets.push({ imageDir: dataset.dir, numRepeats: 1, images: top })
  const entries: Dirent[] = await readdir(dataset.dir, { withFileTypes: true })
  for (const e of entries.sort((a, b) => a.name.localeCompare(b.name))) {
    if (!e.isDirectory() || e.name.startsWith('.')) continue
    const m = /^(\d+)_(.*)$/.exec(e.name)
    const repeats = m ? Number(m[1]) : 0
    if (!m || repeats < 1) continue
    const imageDir = path.join(dataset.dir, e.name)
    const images = await countImages(imageDir)
    if (images === 0) continue
    subsets.push({ imageDir, numRepeats: repeats, classTokens: m[2] || undefined, images })
  }
  if (subsets.length === 0)
    throw new NonRetryableError(
      `${where} has no images for kohya: put .png/.jpg/.webp images in it, or in "<repeats>_<class tokens>" subfolders such as "10_sks dog"`,
      { reason: 'invalid_dataset' },
    )
  return subsets
}

/** A TOML basic string: JSON's escapes are all valid TOML escapes. */
export const tomlString = (s: string): string => JSON.stringify(s)

/** kohya's dataset config (`--dataset_config`), the documented `[general]`/`[[datasets]]`/`[[datasets.subsets]]` form. */
export function datasetToml(
  subsets: readonly KohyaSubset[],
  p: TrainLoraParams,
  captionExtension: string,
): string {
  const lines = [
    '[general]',
    `caption_extension = ${tomlString(captionExtension)}`,
    'shuffle_caption = false',
    '',
    '[[datasets]]',
    `resolution = ${p.resolution}`,
    'batch_size = 1',
    'enable_bucket = false',
  ]
  for (const s of subsets) {
    lines.push(
      '',
      '  [[datasets.subsets]]',
      `  image_dir = ${tomlString(s.imageDir)}`,
      `  num_repeats = ${s.numRepeats}`,
    )
    if (s.classTokens !== undefined) lines.push(`  class_tokens = ${tomlString(s.classTokens)}`)
  }
  return `${lines.join('\n')}\n`
}

export type MixedPrecision = 'fp16' | 'no'

/** fp16 autocast needs CUDA; on a CPU it fails, so a CPU runs full precision (as the recorded runs did). */
export const mixedPrecisionFor = (ctx: Pick<HandlerContext, 'gpu'>): MixedPrecision =>
  ctx.gpu.index !== null ? 'fp16' : 'no'

/** One train_network.py argument: `--name=value`, or `--name` alone for `true`. */
export type KohyaArg = [name: string, value: string | number | true]

/** train_network.py's arguments for a job, in the order the kohya docs list them. */
export function trainArgs(opts: {
  p: TrainLoraParams
  model: string
  tokenizerCache: string
  datasetConfig: string
  outputDir: string
  mixedPrecision: MixedPrecision
}): KohyaArg[] {
  const { p, mixedPrecision } = opts
  return [
    ['pretrained_model_name_or_path', opts.model],
    ['tokenizer_cache_dir', opts.tokenizerCache],
    ['dataset_config', opts.datasetConfig],
    ['output_dir', opts.outputDir],
    ['output_name', OUTPUT_NAME],
    ['save_model_as', 'safetensors'],
    ['network_module', 'networks.lora'],
    ['network_dim', p.rank],
    ['network_alpha', NETWORK_ALPHA],
    ['learning_rate', p.learningRate],
    // AdamW, not kohya's usual AdamW8bit: bitsandbytes is a CUDA-only extra the environment may lack.
    ['optimizer_type', 'AdamW'],
    ['lr_scheduler', 'constant'],
    ['max_train_epochs', p.epochs],
    ['mixed_precision', mixedPrecision],
    ['sdpa', true],
  ]
}

const argv = (args: readonly KohyaArg[]): string[] =>
  args.map(([k, value]) => (value === true ? `--${k}` : `--${k}=${value}`))

/**
 * The same arguments as kohya's `--config_file` TOML (what the kohya_ss GUI writes beside its output), so
 * `train_network.py --config_file training_config.toml` reruns exactly this training.
 */
export function configToml(jobId: string, args: readonly KohyaArg[]): string {
  const value = (x: string | number | true): string =>
    x === true ? 'true' : typeof x === 'number' ? String(x) : tomlString(x)
  return [
    `# kohya sd-scripts train_network.py settings of job ${jobId}, as they were passed to it (paths are the GPU host's).`,
    ...args.map(([k, x]) => `${k} = ${value(x)}`),
    '',
  ].join('\n')
}

/** Reads a safetensors file's header only (a LoRA can be hundreds of MB): its `__metadata__`. */
async function safetensorsMetadata(file: string): Promise<Record<string, string> | null> {
  const fh = await open(file, 'r')
  try {
    const prefix = Buffer.alloc(8)
    if ((await fh.read(prefix, 0, 8, 0)).bytesRead < 8) return null
    const n = Number(prefix.readBigUInt64LE(0))
    if (n <= 0 || n > 100_000_000) return null
    const header = Buffer.alloc(n)
    if ((await fh.read(header, 0, n, 8)).bytesRead < n) return null
    const parsed = JSON.parse(header.toString('utf8')) as { __metadata__?: Record<string, string> }
    return parsed.__metadata__ ?? {}
  } catch {
    return null
  } finally {
    await fh.close()
  }
}

/** The error for a run that ended badly, with the last stderr lines; non-retryable where retrying cannot help. */
function runError(run: EngineProcessResult): Error {
  const how = run.exitCode !== null ? `exited with code ${run.exitCode}` : `was killed by ${run.signal}`
  const tail = run.tail.map((l) => (l.length > TAIL_LINE_CHARS ? `${l.slice(0, TAIL_LINE_CHARS)}…` : l))
  const message = `kohya train_network.py ${how}; last ${tail.length} lines of its stderr:\n${tail.join('\n')}`
  const text = run.tail.join('\n')
  // The environment lacks a package: every attempt would meet the same interpreter.
  if (/ModuleNotFoundError: No module named|No module named accelerate/.test(text))
    return new NonRetryableError(`${message}\n(KOHYA_PYTHON must be the Python of sd-scripts' environment)`, {
      reason: 'engine_not_configured',
    })
  // argparse refused an argument (exit 2 with `error:`): this sd-scripts does not take what we pass.
  if (run.exitCode === 2 && /^(usage: |[\w.]+: error: )/m.test(text))
    return new NonRetryableError(message, { reason: 'engine_not_configured', code: 'ENGINE_USAGE_ERROR' })
  return new RetryableError(message, { reason: 'handler_error', code: 'ENGINE_FAILED' })
}

/**
 * Trains the LoRA with kohya: writes the dataset config, runs
 * `<KOHYA_PYTHON> -m accelerate.commands.launch ... train_network.py --network_module=networks.lora ...` in
 * the job's process group, turns its output into progress, and stores `lora.safetensors` (kohya's file as
 * it wrote it, `ss_*` metadata and all) and `training_config.toml`.
 */
export async function trainWithKohya(p: TrainLoraParams, dataset: Dataset, ctx: HandlerContext) {
  const install = await kohyaInstall(ctx)
  const model = await resolveBaseModel(ctx.paths.models, p.baseModel)
  const tokenizerCache = path.join(ctx.paths.models, TOKENIZER_CACHE)
  if (!(await stat(path.join(tokenizerCache, SD1_TOKENIZER)).catch(() => null))?.isDirectory())
    throw engineNotConfigured(
      'kohya',
      `MODELS_DIR has no ${TOKENIZER_CACHE}/${SD1_TOKENIZER}: put the CLIP tokenizer there (jobs never download from a hub)`,
    )
  const subsets = await datasetSubsets(dataset, p.datasetPath)
  // kohya's default is `.caption`; datasets made for it often use `.txt`. Take whichever the dataset has.
  const captionExtension = (dataset.byExtension['.caption'] ?? 0) > 0 ? '.caption' : '.txt'

  const work = path.join(ctx.paths.scratch, 'kohya')
  const outputDir = path.join(work, 'output')
  await mkdir(outputDir, { recursive: true })
  const datasetConfig = path.join(work, 'dataset.toml')
  await writeFile(datasetConfig, datasetToml(subsets, p, captionExtension))
  const mixedPrecision = mixedPrecisionFor(ctx)
  const args = trainArgs({ p, model, tokenizerCache, datasetConfig, outputDir, mixedPrecision })
  const configFile = path.join(work, CONFIG_FILE)
  await writeFile(configFile, configToml(ctx.jobId, args))
  const trainImages = subsets.reduce((n, s) => n + s.images * s.numRepeats, 0)

  ctx.progress(0, `kohya: loading ${p.baseModel} (${trainImages} images with repeats, ${p.epochs} epochs)`)
  const progress = new KohyaProgress(p.epochs)
  const report = (stream: EngineStream, line: string): void => {
    // Once cancelled, what the trainer prints while it is being stopped is no progress of the job.
    if (ctx.signal.aborted) return
    const update = progress.push(stream, line)
    if (update) ctx.progress(update.percent, update.message)
  }
  let run: EngineProcessResult
  try {
    run = await runEngineProcess({
      command: install.python,
      args: accelerateLaunch(
        {
          num_processes: 1,
          num_machines: 1,
          num_cpu_threads_per_process: 1,
          mixed_precision: mixedPrecision,
          dynamo_backend: 'no',
        },
        install.script,
        argv(args),
        'name=value',
      ),
      cwd: install.dir,
      // Unbuffered, so `epoch N/M` and `saving checkpoint:` arrive when printed; offline, so a missing
      // file fails at once instead of a download at job time.
      env: { PYTHONUNBUFFERED: '1', HF_HUB_OFFLINE: '1' },
      signal: ctx.signal,
      tailLines: TAIL_LINES,
      onLine: report,
      // A tqdm redraw ends only when the next one starts: read each as it is drawn, not one step late.
      onPartial: (stream, text) => {
        if (stream === 'stderr') report(stream, text)
      },
    })
  } catch (err) {
    if (codeOf(err) === 'ENOENT' || codeOf(err) === 'EACCES')
      throw engineNotConfigured(
        'kohya',
        "KOHYA_PYTHON cannot be run: set it to the Python of sd-scripts' environment",
      )
    throw err
  }
  // Cancelled or timed out: the trainer's tree is gone; nothing is stored.
  if (run.aborted) throwIfAborted(ctx.signal)
  if (run.exitCode !== 0) throw runError(run)

  const loraPath = path.join(outputDir, `${OUTPUT_NAME}.safetensors`)
  const written = await lstat(loraPath).catch(() => null)
  if (!written?.isFile())
    throw new RetryableError(
      `kohya train_network.py exited 0 but wrote no ${OUTPUT_NAME}.safetensors; last lines of its stderr:\n${run.tail.join('\n')}`,
      { code: 'ENGINE_NO_OUTPUT' },
    )
  const metadata = await safetensorsMetadata(loraPath)
  if (metadata === null)
    throw new RetryableError(`kohya wrote a ${LORA_FILE} that is not a safetensors file`, {
      code: 'ENGINE_BAD_OUTPUT',
    })

  ctx.progress(96, `uploading ${LORA_FILE}`)
  const lora = await ctx.artifacts.put(LORA_FILE, { file: loraPath })
  await ctx.artifacts.put(CONFIG_FILE, { file: configFile })
  const loss = progress.loss === undefined ? null : Number(progress.loss)
  ctx.progress(100, `model saved. ${LORA_FILE} (rank ${p.rank}, ${progress.step} steps)`)

  return {
    ...engineResult('kohya', [LORA_FILE, CONFIG_FILE]),
    ...loraSummary(p, dataset),
    steps: progress.totalSteps ?? progress.step,
    trainImages,
    mixedPrecision,
    finalLoss: loss !== null && Number.isFinite(loss) ? loss : null,
    loraBytes: lora.size,
    metadataKeys: Object.keys(metadata).filter((k) => k.startsWith('ss_')).length,
  }
}
