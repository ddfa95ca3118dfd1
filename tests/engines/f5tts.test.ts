/**
 * train_voice's `f5tts` engine against the F5-TTS stand-in (tests/engines/fake-f5tts): the recorded
 * output, parsed from its raw bytes; the command lines; the files; bad datasets and models; a crash; cancel
 * and timeout mid-run with every stand-in process gone afterwards.
 */
import { spawnSync } from 'node:child_process'
import { lstat, mkdir, readdir, readFile, rm, writeFile } from 'node:fs/promises'
import { availableParallelism } from 'node:os'
import path from 'node:path'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import { encodeWav } from '../../functions/formats/wav.ts'
import { LineSplitter } from '../../functions/sdk/engine-process.ts'
import { NonRetryableError, RetryableError } from '../../functions/sdk/errors.ts'
import { createTestContext, runHandler, type TestContext } from '../../functions/sdk/testing.ts'
import { expectProgressToEndAt100, rejectionOf } from '../../functions/test-support.ts'
import { estimateUpdates, F5_VOCODER_DIR, warmupUpdates } from '../../functions/train_voice/f5tts.ts'
import { parseEpochBar, TrainingTracker } from '../../functions/train_voice/f5tts-progress.ts'
import trainVoice from '../../functions/train_voice/index.ts'
import { DEFAULT_VOICE_BASE_MODEL } from '../../schema/params/index.ts'
import {
  type F5Standin,
  makeF5Standin,
  STANDIN_PYTHON,
  stillRunning,
  TRANSCRIPTS,
} from './fake-f5tts/standin.ts'

const raw = (name: string) => readFile(path.join(TRANSCRIPTS, name))

/** Splits bytes the way the job reads an engine's pipe: on `\r` and `\n`, in arbitrary chunks. */
function linesOf(bytes: Buffer, chunk = 7): string[] {
  const lines: string[] = []
  const splitter = new LineSplitter((line) => lines.push(line))
  // Small chunks cut the bar's 3-byte block characters in two: decoding must survive that.
  for (let i = 0; i < bytes.length; i += chunk) splitter.write(bytes.subarray(i, i + chunk))
  splitter.end()
  return lines
}

describe('F5-TTS output parsing (recorded bytes)', () => {
  it.each([
    ['finetune_cli_finetune_pretrain.stderr.raw', ['42.5', '42.3', '43.4']],
    ['finetune_cli_scratch.stderr.raw', ['42.7', '42.1', '43']],
  ])('reads every epoch bar redraw of %s, postfix keys sorted', async (file, losses) => {
    const bars = linesOf(await raw(file))
      .map(parseEpochBar)
      .filter((b) => b !== null)
    // 0/3, then per update one redraw with the old postfix and one with the new, then the closing redraw.
    expect(bars.map((b) => `${b.n}/${b.total}:${b.update ?? '-'}`)).toEqual([
      '0/3:-',
      '1/3:-',
      '1/3:1',
      '2/3:1',
      '2/3:2',
      '3/3:2',
      '3/3:3',
      '3/3:3',
    ])
    expect(bars.every((b) => b.epoch === 1 && b.epochs === 1)).toBe(true)
    expect([...new Set(bars.map((b) => b.loss).filter(Boolean))]).toEqual(losses)
  })

  it('turns the recorded run into rising progress and the saved update', async () => {
    const tracker = new TrainingTracker({ from: 5, to: 95 }, 1)
    const reports = [
      ...linesOf(await raw('finetune_cli_finetune_pretrain.stderr.raw')),
      ...linesOf(await raw('finetune_cli_finetune_pretrain.stdout')),
    ]
      .map((l) => tracker.line(l))
      .filter((r) => r !== null)
    expect(reports.map((r) => r.percent)).toEqual([5, 35, 35, 65, 65, 95, 95, 95, 95])
    expect(reports.at(-3)?.message).toBe('Epoch 1/1 - update=3, loss=43.4')
    expect(reports.slice(-2).map((r) => r.message)).toEqual([
      'Saved last checkpoint at update 2',
      'Saved last checkpoint at update 3',
    ])
    expect(tracker).toMatchObject({ update: 3, loss: '43.4', savedUpdate: 3, vocabSize: 2545 })
  })

  it('spreads the epochs: epoch 2 of 4 half done is 37.5% of the training', () => {
    const tracker = new TrainingTracker({ from: 0, to: 100 }, 4)
    expect(
      tracker.line('Epoch 2/4:  50%|█████     | 5/10 [00:05<00:05, 1.00update/s, loss=0.7, update=15]'),
    ).toEqual({
      percent: 37.5,
      message: 'Epoch 2/4 - update=15, loss=0.7',
    })
    // An earlier epoch's bar would take progress back: not reported; nor are lines that are not bars.
    expect(
      tracker.line('Epoch 1/4:  90%|█████████ | 9/10 [00:09<00:01, 1.00update/s, loss=0.8, update=9]'),
    ).toBe(null)
    // A warning printed onto the bar's line (as the Trainer's first redraw has it) still reads as the bar.
    expect(
      parseEpochBar('Epoch 1/4:   0%|          | 0/10 [00:00<?, ?update/s]/x/dataloader.py:437: UserWarning'),
    ).toEqual({ epoch: 1, epochs: 4, n: 0, total: 10 })
    expect(
      tracker.line('Sorting with sampler... if slow: 100%|██████████| 6/6 [00:00<00:00, 77672.30it/s]'),
    ).toBe(null)
  })
})

describe('the F5-TTS stand-in', () => {
  let s: F5Standin
  beforeAll(async () => {
    s = await makeF5Standin()
  })
  afterAll(() => s.cleanup())

  it('replays the recorded fine-tune byte for byte when run as it was recorded', async () => {
    // The recorded command (finetune_cli_finetune_pretrain.stderr.raw, "Command being timed"), from a
    // checkout whose data/tiny2_pinyin was prepared.
    const src = path.join(s.f5Dir, 'src')
    const data = path.join(s.f5Dir, 'data', 'tiny2_pinyin')
    await mkdir(data, { recursive: true })
    await writeFile(path.join(data, 'raw.arrow'), '')
    await writeFile(path.join(data, 'duration.json'), '{"duration":[1]}')
    await writeFile(path.join(data, 'vocab.txt'), s.vocab)
    const pretrain = path.join(s.modelsDir, DEFAULT_VOICE_BASE_MODEL)
    const run = spawnSync(
      s.python,
      [
        '-m',
        'accelerate.commands.launch',
        '--num_processes',
        '1',
        '--mixed_precision',
        'no',
        path.join(src, 'f5_tts/train/finetune_cli.py'),
        ...'--exp_name F5TTS_v1_Base --dataset_name tiny2 --tokenizer pinyin --finetune --pretrain'.split(
          ' ',
        ),
        pretrain,
        ...'--learning_rate 1e-5 --batch_size_per_gpu 700 --batch_size_type frame --max_samples 64 --epochs 1 --num_warmup_updates 2 --save_per_updates 10 --keep_last_n_checkpoints 0 --last_per_updates 2'.split(
          ' ',
        ),
      ],
      { cwd: s.f5Dir },
    )
    expect(run.status).toBe(0)
    expect(run.stderr.equals(await raw('finetune_cli_finetune_pretrain.stderr.raw'))).toBe(true)
    // The recorder appended the exit status ("rc=0") to stdout.
    expect(`${run.stdout.toString('utf8')}rc=0\n`).toBe(
      (await raw('finetune_cli_finetune_pretrain.stdout')).toString('utf8'),
    )
    const ckpts = path.join(s.f5Dir, 'ckpts', 'tiny2')
    expect((await readdir(ckpts)).sort()).toEqual(['model_last.pt', 'pretrained_model_1250000.safetensors'])
    await rm(ckpts, { recursive: true })
    await rm(data, { recursive: true })
  })

  it('refuses an argument finetune_cli does not have, as argparse does', () => {
    const run = spawnSync(s.python, [path.join(s.f5Dir, 'src/f5_tts/train/finetune_cli.py'), '--epoch', '1'])
    expect(run.status).toBe(2)
    expect(run.stderr.toString()).toContain('error: unrecognized arguments: --epoch')
    expect(STANDIN_PYTHON).toMatch(/python\.mjs$/)
  })
})

describe('train_voice with engine f5tts (stand-in)', () => {
  let s: F5Standin
  const contexts: TestContext[] = []
  beforeAll(async () => {
    s = await makeF5Standin()
  })
  afterEach(async () => {
    await s.configure({})
  })
  afterAll(async () => {
    await Promise.all(contexts.map((t) => t.cleanup()))
    await s.cleanup()
  })
  const context = async (over: { f5ttsDir?: string; modelsDir?: string } = {}) => {
    const t = await createTestContext({
      type: 'train_voice',
      jobId: 'voice-f5',
      dataDir: s.dataDir,
      modelsDir: over.modelsDir ?? s.modelsDir,
      f5ttsDir: over.f5ttsDir ?? s.f5Dir,
      f5ttsPython: s.python,
    })
    contexts.push(t)
    return t
  }
  const params = (extra: Record<string, unknown> = {}) => ({
    speakerName: 'Ada',
    datasetPath: 'speaker_ds',
    epochs: 1,
    engine: 'f5tts',
    ...extra,
  })
  const invocationsSince = async (n: number) => (await s.invocations()).slice(n)

  it('prepares the dataset, fine-tunes in the job tree and stores model_last.pt, vocab.txt, speaker.json', async () => {
    const t = await context()
    const before = (await s.invocations()).length
    const result = await runHandler(trainVoice, params(), t)
    expect(result).toMatchObject({
      engine: 'f5tts',
      simulated: false,
      files: ['model_last.pt', 'vocab.txt', 'speaker.json'],
      updates: 3,
      finalLoss: 43.4,
      clips: 3,
      vocabSize: 2545,
      samplesLogged: false,
      baseModel: DEFAULT_VOICE_BASE_MODEL,
    })

    // model_last.pt as F5-TTS's Trainer saves it (torch.save's zip format), vocab.txt as prepare_csv_wavs
    // copies it in fine-tune mode: the pretrained vocab, byte for byte (CRLF included).
    const model = t.artifacts.files.get('model_last.pt')
    expect(model?.bytes.subarray(0, 4).toString('latin1')).toBe('PK\x03\x04')
    expect(model?.bytes.includes(Buffer.from('model_last/data.pkl'))).toBe(true)
    expect(model?.record.key).toBe('voices/voice-f5/model_last.pt')
    expect(t.artifacts.files.get('vocab.txt')?.bytes.equals(s.vocab)).toBe(true)
    expect(JSON.parse(t.artifacts.files.get('speaker.json')?.bytes.toString() ?? '{}')).toMatchObject({
      speakerName: 'Ada',
      checkpoint: 'model_last.pt',
      updates: 3,
      simulated: false,
    })

    expectProgressToEndAt100(t.progress)
    const messages = t.progress.map((p) => p.message)
    expect(messages).toContain('Epoch 1/1 - update=3, loss=43.4')
    expect(messages).toContain('Saved last checkpoint at update 3')

    const [prepare, launch, trainer] = await invocationsSince(before)
    const root = path.join(t.ctx.paths.scratch, 'f5tts')
    expect(prepare?.argv).toEqual([
      path.join(s.f5Dir, 'src/f5_tts/train/datasets/prepare_csv_wavs.py'),
      path.join(root, 'metadata.csv'),
      path.join(root, 'data/voice_pinyin'),
    ])
    expect(launch?.argv.slice(0, 13)).toEqual([
      '-m',
      'accelerate.commands.launch',
      '--num_processes',
      '1',
      '--num_machines',
      '1',
      '--mixed_precision',
      'no',
      '--dynamo_backend',
      'no',
      // No GPU here: every core for the trainer.
      '--num_cpu_threads_per_process',
      String(availableParallelism()),
      path.join(s.f5Dir, 'src/f5_tts/train/finetune_cli.py'),
    ])
    const args = launch?.argv.slice(13).join(' ')
    expect(args).toContain(
      `--exp_name F5TTS_v1_Base --dataset_name voice --tokenizer pinyin --finetune --pretrain ${path.join(s.modelsDir, DEFAULT_VOICE_BASE_MODEL)}`,
    )
    expect(args).toContain('--epochs 1 ')
    // One update by F5's batching: no warmup, or the LR decay would divide by zero.
    expect(args).toContain('--num_warmup_updates 0 ')
    expect(args).toContain('--keep_last_n_checkpoints 0')
    expect(args).not.toContain('--log_samples')
    expect(trainer?.argv).toEqual(launch?.argv.slice(12))
    for (const inv of [prepare, launch, trainer]) {
      expect(inv?.cwd).toBe(root)
      expect(inv?.env).toMatchObject({ HF_HUB_OFFLINE: '1', PYTHONUNBUFFERED: '1' })
      expect(inv?.env.PYTHONPATH?.split(':')[0]).toBe(path.join(root, 'src'))
    }
    // The absolute paths prepare_csv_wavs needs, each clip's text as written.
    expect(await readFile(path.join(root, 'metadata.csv'), 'utf8')).toBe(
      `audio_file|text\n${[
        'Hello there, this is a test.',
        'The quick brown fox.',
        'One more sentence to learn from.',
      ]
        .map((text, i) => `${path.join(s.dataDir, 'speaker_ds', 'wavs', `clip${i + 1}.wav`)}|${text}`)
        .join('\n')}\n`,
    )
    // Everything F5-TTS wrote is in the job's tree; the shared checkout is untouched, and the pretrained
    // checkpoint was linked, not copied.
    expect(await readdir(path.join(s.f5Dir, 'ckpts'))).toEqual(['README.md'])
    expect(await readdir(path.join(s.f5Dir, 'data'))).toEqual(['Emilia_ZH_EN_pinyin'])
    const pretrained = await lstat(path.join(root, 'ckpts/voice/pretrained_model_1250000.safetensors'))
    expect(pretrained.isSymbolicLink()).toBe(true)
    expect(await stillRunning(await s.pids())).toEqual([])
  })

  it('logs samples, from the vocoder on the volume through an offline hub cache, and uploads them', async () => {
    const models = path.join(s.root, 'models-with-vocoder')
    await mkdir(path.join(models, F5_VOCODER_DIR), { recursive: true })
    await mkdir(path.dirname(path.join(models, DEFAULT_VOICE_BASE_MODEL)), { recursive: true })
    await writeFile(
      path.join(models, DEFAULT_VOICE_BASE_MODEL),
      await readFile(path.join(s.modelsDir, DEFAULT_VOICE_BASE_MODEL)),
    )
    await writeFile(path.join(models, F5_VOCODER_DIR, 'config.yaml'), 'feature_extractor: {}\n')
    await writeFile(path.join(models, F5_VOCODER_DIR, 'pytorch_model.bin'), 'weights')
    const t = await context({ modelsDir: models })
    const before = (await s.invocations()).length
    const result = await runHandler(trainVoice, params(), t)
    const [, launch] = await invocationsSince(before)
    expect(launch?.argv).toContain('--log_samples')
    expect(launch?.env.HF_HUB_CACHE).toBe(path.join(t.ctx.paths.scratch, 'f5tts', 'hf-hub'))
    expect(result).toMatchObject({ samplesLogged: true })
    // The tiny dataset is one update per epoch by F5's estimate: samples every update.
    expect((result as { files: string[] }).files).toContain('samples/update_3_gen.wav')
    expect(t.artifacts.files.get('samples/update_3_gen.wav')?.bytes.subarray(0, 4).toString()).toBe('RIFF')
  })

  it('estimates updates as F5-TTS batches frames: 3200 frames a batch, at least one per epoch', () => {
    expect(estimateUpdates([1, 1.5, 2], 10)).toBe(10)
    expect(estimateUpdates([20, 20, 20], 2)).toBe(2 * Math.ceil((60 * 24_000) / 256 / 3200))
    // A clip over 3200 frames (34 s) is left out of every batch.
    expect(estimateUpdates([1, 40], 1)).toBe(1)
  })

  it('keeps the LR decay at least one update long: no warmup for a one-update run', () => {
    expect([1, 2, 3, 40, 100, 10_000].map(warmupUpdates)).toEqual([0, 1, 1, 2, 5, 100])
  })

  it('refuses a dataset with no clip F5-TTS trains on (0.3-30 s), which would hang its data loader', async () => {
    const ds = path.join(s.dataDir, 'too_short')
    await mkdir(ds, { recursive: true })
    await writeFile(path.join(ds, 'blip.wav'), encodeWav(new Int16Array(2400), 24_000))
    await writeFile(path.join(ds, 'metadata.csv'), 'audio_file|text\nblip.wav|hi\n')
    const t = await context()
    const err = await rejectionOf(runHandler(trainVoice, params({ datasetPath: 'too_short' }), t))
    expect(err).toBeInstanceOf(NonRetryableError)
    expect(err.message).toBe(
      'dataset "too_short": no clip is between 0.3 and 30 seconds long, the lengths F5-TTS trains on',
    )
  })

  it('refuses a dataset without metadata.csv, naming datasetPath', async () => {
    await mkdir(path.join(s.dataDir, 'no_meta'), { recursive: true })
    await writeFile(path.join(s.dataDir, 'no_meta', 'a.wav'), 'x')
    const t = await context()
    const err = await rejectionOf(runHandler(trainVoice, params({ datasetPath: 'no_meta' }), t))
    expect(err).toBeInstanceOf(NonRetryableError)
    expect(err.reason).toBe('invalid_dataset')
    expect(err.message).toContain('dataset "no_meta" has no metadata.csv')
  })

  it('refuses a metadata.csv naming wav files that are missing, naming datasetPath and the files', async () => {
    const ds = path.join(s.dataDir, 'missing_wavs')
    await mkdir(ds, { recursive: true })
    await writeFile(
      path.join(ds, 'metadata.csv'),
      'audio_file|text\nwavs/gone.wav|hello\n../speaker_ds/wavs/clip1.wav|x\n',
    )
    const t = await context()
    const err = await rejectionOf(runHandler(trainVoice, params({ datasetPath: 'missing_wavs' }), t))
    expect(err).toBeInstanceOf(NonRetryableError)
    expect(err.reason).toBe('invalid_dataset')
    expect(err.message).toMatch(
      /dataset "missing_wavs".*outside the dataset: \.\.\/speaker_ds\/wavs\/clip1\.wav/,
    )
    await writeFile(path.join(ds, 'metadata.csv'), 'audio_file|text\nwavs/gone.wav|hello\n')
    const again = await rejectionOf(runHandler(trainVoice, params({ datasetPath: 'missing_wavs' }), t))
    expect(again.message).toBe(
      'dataset "missing_wavs": metadata.csv names audio files that are not in the dataset: wavs/gone.wav',
    )
  })

  it('refuses a wav F5-TTS cannot read (prepare_csv_wavs would skip it), naming it', async () => {
    const ds = path.join(s.dataDir, 'corrupt_wav')
    await mkdir(ds, { recursive: true })
    await writeFile(path.join(ds, 'bad.wav'), 'not a wav')
    await writeFile(
      path.join(ds, 'good.wav'),
      await readFile(path.join(s.dataDir, 'speaker_ds/wavs/clip1.wav')),
    )
    await writeFile(path.join(ds, 'metadata.csv'), 'audio_file|text\ngood.wav|hello\nbad.wav|world\n')
    const t = await context()
    const err = await rejectionOf(runHandler(trainVoice, params({ datasetPath: 'corrupt_wav' }), t))
    expect(err).toBeInstanceOf(NonRetryableError)
    expect(err.message).toBe('dataset "corrupt_wav": F5-TTS could not read 1 audio file(s): bad.wav')
  })

  it.each([
    ['a relative path out of MODELS_DIR', '../outside.safetensors', 'must name a file inside MODELS_DIR'],
    ['an absolute path elsewhere', '/etc/hostname', 'must name a file inside MODELS_DIR'],
    [
      'a missing checkpoint',
      'f5tts/none.safetensors',
      '"f5tts/none.safetensors" is not a file in MODELS_DIR',
    ],
  ])('refuses %s as baseModel', async (_what, baseModel, message) => {
    const t = await context()
    const err = await rejectionOf(runHandler(trainVoice, params({ baseModel }), t))
    expect(err).toBeInstanceOf(NonRetryableError)
    expect(err.reason).toBe('invalid_params')
    expect(err.message).toContain('params.baseModel')
    expect(err.message).toContain(message)
  })

  it('refuses a baseModel symlink that leads out of MODELS_DIR', async () => {
    const { symlink } = await import('node:fs/promises')
    const link = path.join(s.modelsDir, 'f5tts', 'escape.safetensors')
    await writeFile(path.join(s.root, 'outside.safetensors'), 'x')
    await symlink(path.join(s.root, 'outside.safetensors'), link).catch(() => {})
    const t = await context()
    const err = await rejectionOf(
      runHandler(trainVoice, params({ baseModel: 'f5tts/escape.safetensors' }), t),
    )
    expect(err.message).toContain('leads out of MODELS_DIR')
  })

  it('says what to configure when F5TTS_DIR is not an F5-TTS checkout', async () => {
    const t = await context({ f5ttsDir: s.modelsDir })
    const err = await rejectionOf(runHandler(trainVoice, params(), t))
    expect(err.reason).toBe('engine_not_configured')
    expect(err.message).toContain('F5TTS_DIR is not a complete F5-TTS checkout')
  })

  it('fails with the last stderr lines when the trainer exits non-zero, uploading nothing', async () => {
    await s.configure({ failAt: 2 })
    const t = await context()
    const err = await rejectionOf(runHandler(trainVoice, params(), t))
    expect(err).toBeInstanceOf(RetryableError)
    expect(err.message).toMatch(/^F5-TTS finetune_cli exited with code 1; last stderr lines:\n/)
    expect(err.message).toContain('DefaultCPUAllocator: not enough memory')
    expect(err.message).toContain('subprocess.CalledProcessError')
    // The bar is in the tail as a terminal shows it: its last redraw, not one line per redraw (the first
    // stays, since a warning was printed onto it).
    expect(err.message).toContain('| 2/3 [00:44<00:20, 20.53s/update, loss=42.3, update=2]Traceback')
    expect(err.message).not.toContain('1/3 [00:33<01:06, 33.08s/update]')
    expect(err.message.match(/Epoch 1\/1:/g)).toHaveLength(2)
    expect(t.artifacts.files.size).toBe(0)
    expect(await stillRunning(await s.pids())).toEqual([])
  })

  it.each([
    ['cancelled', Object.assign(new Error('job cancelled'), { name: 'AbortError', reason: 'cancelled' })],
    ['timed out', Object.assign(new Error('job timeout'), { name: 'AbortError', reason: 'timeout' })],
  ])(
    'stops the trainer, its launcher and workers when %s mid-run, uploading nothing',
    async (_what, reason) => {
      await s.configure({ stepMs: 400 })
      const t = await context()
      const pidsBefore = new Set(await s.pids())
      const record = t.ctx.progress
      t.ctx.progress = (percent, message) => {
        record(percent, message)
        if (message === 'Epoch 1/1 - update=1, loss=42.5') t.abort(reason)
      }
      const started = performance.now()
      const err = await rejectionOf(runHandler(trainVoice, params(), t))
      expect(err).toBe(reason)
      expect(performance.now() - started).toBeLessThan(10_000)
      const pids = (await s.pids()).filter((p) => !pidsBefore.has(p))
      // prepare_csv_wavs, the launcher, the trainer and its two workers.
      expect(pids).toHaveLength(5)
      expect(await stillRunning(pids)).toEqual([])
      expect(t.artifacts.files.size).toBe(0)
      expect(t.progress.some((p) => p.message?.startsWith('Saved last checkpoint'))).toBe(false)
    },
  )
})
