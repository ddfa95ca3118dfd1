import { mkdir, readFile, rm, symlink, writeFile } from 'node:fs/promises'
import path from 'node:path'
import { afterEach, describe, expect, it } from 'vitest'
import { readSafetensors } from '../../functions/formats/safetensors.ts'
import { NonRetryableError, RetryableError } from '../../functions/sdk/errors.ts'
import { runHandler, type TestContext } from '../../functions/sdk/testing.ts'
import { expectProgressToEndAt100, handlerSuite, rejectionOf } from '../../functions/test-support.ts'
import trainLora, { CONFIG_FILE, LORA_FILE } from '../../functions/train_lora/index.ts'
import { datasetSubsets, datasetToml } from '../../functions/train_lora/kohya.ts'
import { expectKohyaLora } from '../helpers/kohya-lora.ts'
import { processGone } from '../helpers/stack.ts'
import { KOHYA_PYTHON, type KohyaFixture, makeKohyaFixture } from './fake-kohya/fixture.ts'

const suite = handlerSuite({ type: 'train_lora', jobId: 'kohya-job-1' })
let kohya: KohyaFixture
afterEach(async () => {
  await kohya?.cleanup()
})

const setup = async (
  scenario: Parameters<typeof makeKohyaFixture>[0] = {},
  engine: Record<string, string> = {},
) => {
  kohya = await makeKohyaFixture(scenario)
  return suite.context(0, {
    modelsDir: kohya.modelsDir,
    kohyaDir: kohya.kohyaDir,
    kohyaPython: KOHYA_PYTHON,
    ...engine,
  })
}

const params = (extra: Record<string, unknown> = {}) => ({
  engine: 'kohya',
  baseModel: 'tiny-sd15',
  datasetPath: 'lora_ds',
  epochs: 1,
  rank: 4,
  learningRate: 2e-4,
  resolution: 64,
  ...extra,
})

/** Records when each progress event arrived. */
const timed = (t: TestContext) => {
  const at: number[] = []
  const record = t.ctx.progress
  t.ctx.progress = (p, m) => {
    at.push(performance.now())
    record(p, m)
  }
  return at
}

describe('train_lora on kohya (stand-in sd-scripts)', () => {
  it("stores kohya's lora.safetensors as written (ss_* metadata kept) and the real training_config.toml", async () => {
    const t = await setup({ stepMs: 60 })
    const at = timed(t)
    const result = await runHandler(trainLora, params(), t)

    expect(result).toMatchObject({
      engine: 'kohya',
      simulated: false,
      files: [LORA_FILE, CONFIG_FILE],
      steps: 3,
      rank: 4,
      trainImages: 30, // 3 images x 10 repeats ("10_sks dog")
      mixedPrecision: 'no',
      finalLoss: 1.2,
    })
    const written = await readFile(path.join(t.ctx.paths.scratch, 'kohya', 'output', LORA_FILE))
    const stored = t.artifacts.files.get(LORA_FILE)?.bytes
    expect(stored && Buffer.compare(stored, written)).toBe(0)
    const lora = expectKohyaLora(
      stored,
      {
        ss_network_dim: '4',
        ss_network_alpha: '1.0',
        ss_learning_rate: '0.0002',
        ss_mixed_precision: 'no',
        ss_sd_model_name: 'tiny-sd15',
      },
      {
        resolution: [64, 64],
        num_train_images: 30,
        subsets: [{ image_dir: '10_sks dog', num_repeats: 10, class_tokens: 'sks dog' }],
      },
    )
    expect(lora.metadata.simulated).toBeUndefined()
    expect(
      lora.tensors.get(
        'lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight',
      )?.shape,
    ).toEqual([4, 320])

    // Progress came from the trainer's own lines, while it ran (a pause before each bar redraw).
    expectProgressToEndAt100(t.progress)
    const messages = t.progress.map((p) => p.message)
    expect(messages).toContain('Epoch 1/1 - loss=1.12')
    expect(messages).toContain('saving checkpoint: tinylora-step00000002.safetensors')
    expect(messages.indexOf('Epoch 1/1 - loss=1.2')).toBeGreaterThan(
      messages.indexOf('Epoch 1/1 - loss=1.12'),
    )
    const first = messages.indexOf('Epoch 1/1 - loss=1.12')
    const last = messages.indexOf('Epoch 1/1 - loss=1.2')
    expect(at[last]! - at[first]!).toBeGreaterThan(150)
  })

  it('launches `python -m accelerate.commands.launch ... train_network.py` with the params, in our process group, unbuffered and offline', async () => {
    const t = await setup()
    await runHandler(trainLora, params({ epochs: 2 }), t)
    const [launcher, trainer] = await kohya.calls()
    const scratch = path.join(t.ctx.paths.scratch, 'kohya')
    const trainArgv = [
      path.join(kohya.kohyaDir, 'train_network.py'),
      `--pretrained_model_name_or_path=${kohya.model}`,
      `--tokenizer_cache_dir=${path.join(kohya.modelsDir, 'kohya', 'tokenizers')}`,
      `--dataset_config=${path.join(scratch, 'dataset.toml')}`,
      `--output_dir=${path.join(scratch, 'output')}`,
      '--output_name=lora',
      '--save_model_as=safetensors',
      '--network_module=networks.lora',
      '--network_dim=4',
      '--network_alpha=1',
      '--learning_rate=0.0002',
      '--optimizer_type=AdamW',
      '--lr_scheduler=constant',
      '--max_train_epochs=2',
      '--mixed_precision=no',
      '--sdpa',
    ]
    expect(launcher?.argv).toEqual([
      '-m',
      'accelerate.commands.launch',
      '--num_processes=1',
      '--num_machines=1',
      '--num_cpu_threads_per_process=1',
      '--mixed_precision=no',
      '--dynamo_backend=no',
      ...trainArgv,
    ])
    expect(trainer?.argv).toEqual(trainArgv)
    expect(launcher?.cwd).toBe(kohya.kohyaDir)
    expect(launcher?.env).toMatchObject({ PYTHONUNBUFFERED: '1', HF_HUB_OFFLINE: '1' })
    // Not detached: both stay in the job process's group, which the host kills on cancel and timeout.
    const ownGroup = Number((await readFile('/proc/self/stat', 'utf8')).split(') ')[1]?.split(' ')[2])
    expect(launcher?.pgid).toBe(ownGroup)
    expect(trainer?.pgid).toBe(ownGroup)

    expect(await readFile(path.join(scratch, 'dataset.toml'), 'utf8')).toBe(
      [
        '[general]',
        'caption_extension = ".caption"',
        'shuffle_caption = false',
        '',
        '[[datasets]]',
        'resolution = 64',
        'batch_size = 1',
        'enable_bucket = false',
        '',
        '  [[datasets.subsets]]',
        `  image_dir = ${JSON.stringify(path.join(suite.fx.dataDir, 'lora_ds', '10_sks dog'))}`,
        '  num_repeats = 10',
        '  class_tokens = "sks dog"',
        '',
      ].join('\n'),
    )
    // training_config.toml is what ran: the same settings, in kohya's --config_file form.
    const config = t.artifacts.files.get(CONFIG_FILE)?.bytes.toString('utf8') ?? ''
    const settings = config.split('\n').filter((l) => l && !l.startsWith('#'))
    expect(
      settings.map((l) =>
        l.replace(/^(\w+) = (?:"(.*)"|(.*))$/, (_m, k, s, x) =>
          x === 'true' ? `--${k}` : `--${k}=${s ?? x}`,
        ),
      ),
    ).toEqual(trainArgv.slice(1))
  })

  it('asks for fp16 on a GPU', async () => {
    const t = await setup()
    t.ctx.gpu = { index: 0, uuid: 'GPU-0', name: 'test', vramTotalMb: 24_000 }
    await runHandler(trainLora, params(), t)
    const [launcher, trainer] = await kohya.calls()
    expect(launcher?.argv).toContain('--mixed_precision=fp16')
    expect(trainer?.argv).toContain('--mixed_precision=fp16')
    expect(readSafetensors(t.artifacts.files.get(LORA_FILE)!.bytes).metadata.ss_mixed_precision).toBe('fp16')
  })

  it('follows a run logged with --console_log_simple too (run4: two epochs, logs on stdout)', async () => {
    const t = await setup({ transcript: 'run4' })
    await runHandler(trainLora, params({ epochs: 2 }), t)
    const messages = t.progress.map((p) => p.message)
    expect(messages).toContain('Epoch 1/2 - loss=1.2')
    expect(messages).toContain('Epoch 2/2 - loss=1.22')
    expect(messages).toContain('saving checkpoint: tinylora-000001.safetensors')
    expectProgressToEndAt100(t.progress)
    expect(t.artifacts.files.has(LORA_FILE)).toBe(true)
  })

  it('makes one subset of images right in the dataset folder and one per <repeats>_<tokens> folder, skipping others', async () => {
    const dir = path.join(suite.fx.dataDir, 'mixed_ds')
    await mkdir(path.join(dir, '5_red cat'), { recursive: true })
    await mkdir(path.join(dir, 'notes'), { recursive: true })
    await writeFile(path.join(dir, 'a.png'), 'x')
    await writeFile(path.join(dir, 'a.txt'), 'a cat')
    await writeFile(path.join(dir, '5_red cat', 'b.JPG'), 'x')
    await writeFile(path.join(dir, 'notes', 'c.png'), 'x')
    const subsets = await datasetSubsets({ dir, files: 4, byExtension: {} }, 'mixed_ds')
    expect(subsets).toEqual([
      { imageDir: dir, numRepeats: 1, images: 1 },
      { imageDir: path.join(dir, '5_red cat'), numRepeats: 5, classTokens: 'red cat', images: 1 },
    ])
    const toml = datasetToml(subsets, { resolution: 512 } as never, '.txt')
    expect(toml).toContain(`image_dir = ${JSON.stringify(dir)}\n  num_repeats = 1\n`)
    expect(toml).toContain('num_repeats = 5\n  class_tokens = "red cat"\n')
    await rm(dir, { recursive: true })
  })

  it.each([
    ['a relative path out of MODELS_DIR', '../outside'],
    ['an absolute path', '/etc'],
    ['a symlink that leads out of MODELS_DIR', 'escape'],
  ])('refuses %s as baseModel before starting anything', async (_what, baseModel) => {
    const t = await setup()
    await symlink(suite.fx.outside, path.join(kohya.modelsDir, 'escape'))
    const err = await rejectionOf(runHandler(trainLora, params({ baseModel }), t))
    expect(err).toBeInstanceOf(NonRetryableError)
    expect(err.reason).toBe('invalid_params')
    expect(err.message).toContain('params.baseModel')
    expect(err.message).not.toContain(kohya.root)
    expect(await kohya.calls()).toEqual([])
  })

  it('refuses a missing model naming baseModel and MODELS_DIR, and a folder that is not a Diffusers model', async () => {
    const t = await setup()
    const err = await rejectionOf(runHandler(trainLora, params({ baseModel: 'sd15/missing.safetensors' }), t))
    expect(err).toBeInstanceOf(NonRetryableError)
    expect(err.message).toMatch(/params\.baseModel "sd15\/missing\.safetensors" was not found in MODELS_DIR/)
    expect(err.message).not.toContain(kohya.root)
    await mkdir(path.join(kohya.modelsDir, 'kohya', 'empty'), { recursive: true })
    const notModel = await rejectionOf(runHandler(trainLora, params({ baseModel: 'kohya/empty' }), t))
    expect(notModel.message).toMatch(/params\.baseModel "kohya\/empty" is a folder without model_index\.json/)
    expect(await kohya.calls()).toEqual([])
  })

  it('names KOHYA_DIR when it is unset or not an sd-scripts checkout, and KOHYA_PYTHON when it cannot run', async () => {
    const t = await setup()
    t.ctx.engines = { ...t.ctx.engines, kohyaDir: undefined }
    const unset = await rejectionOf(runHandler(trainLora, params(), t))
    expect(unset).toBeInstanceOf(NonRetryableError)
    expect(unset.reason).toBe('engine_not_configured')
    expect(unset.message).toContain('KOHYA_DIR')

    t.ctx.engines = { ...t.ctx.engines, kohyaDir: kohya.modelsDir }
    const wrong = await rejectionOf(runHandler(trainLora, params(), t))
    expect(wrong.reason).toBe('engine_not_configured')
    expect(wrong.message).toMatch(/KOHYA_DIR has no train_network\.py/)

    t.ctx.engines = {
      ...t.ctx.engines,
      kohyaDir: kohya.kohyaDir,
      kohyaPython: path.join(kohya.root, 'no-python'),
    }
    const python = await rejectionOf(runHandler(trainLora, params(), t))
    expect(python.reason).toBe('engine_not_configured')
    expect(python.message).toContain('KOHYA_PYTHON')
  })

  it('refuses to start without the tokenizer cache on the models volume (no hub at job time)', async () => {
    const t = await setup()
    await rm(path.join(kohya.modelsDir, 'kohya', 'tokenizers'), { recursive: true })
    const err = await rejectionOf(runHandler(trainLora, params(), t))
    expect(err.reason).toBe('engine_not_configured')
    expect(err.message).toContain('MODELS_DIR has no kohya/tokenizers/openai_clip-vit-large-patch14')
    expect(await kohya.calls()).toEqual([])
  })

  it('a KOHYA_PYTHON without accelerate fails for good, naming KOHYA_PYTHON', async () => {
    const t = await setup()
    // What `python3 -m accelerate.commands.launch` prints where accelerate is not installed.
    const python = path.join(kohya.root, 'python3')
    await writeFile(
      python,
      "#!/bin/sh\necho \"$0: Error while finding module specification for 'accelerate.commands.launch' (ModuleNotFoundError: No module named 'accelerate')\" >&2\nexit 1\n",
      { mode: 0o755 },
    )
    t.ctx.engines = { ...t.ctx.engines, kohyaPython: python }
    const err = await rejectionOf(runHandler(trainLora, params(), t))
    expect(err).toBeInstanceOf(NonRetryableError)
    expect(err.reason).toBe('engine_not_configured')
    expect(err.message).toContain("No module named 'accelerate'")
    expect(err.message).toContain('KOHYA_PYTHON')
  })

  it('a trainer that fails mid-run: retryable, with the last 100 stderr lines in the error, nothing stored', async () => {
    const t = await setup({ failAtStep: 2 })
    const err = await rejectionOf(runHandler(trainLora, params(), t))
    expect(err).toBeInstanceOf(RetryableError)
    expect(err.code).toBe('ENGINE_FAILED')
    const [head, ...tail] = err.message.split('\n')
    expect(head).toBe('kohya train_network.py exited with code 1; last 100 lines of its stderr:')
    expect(tail).toHaveLength(100)
    expect(tail.at(-1)).toBe('RuntimeError: stand-in failure at step 2')
    expect(tail).toContain('Traceback (most recent call last):')
    // A bar redrawn with \r takes one line of the tail, not one per redraw (a log record after it ends one more).
    expect(tail.filter((l) => l.startsWith('steps:')).length).toBeLessThanOrEqual(2)
    expect(tail.filter((l) => l.startsWith('steps:')).at(-1)).toMatch(/\| 1\/3 \[.*avr_loss=1\.12\]$/)
    expect(t.artifacts.files.size).toBe(0)
  })

  it('an sd-scripts that refuses an argument (argparse, exit 2) fails for good', async () => {
    const t = await setup({ unknownOptions: ['sdpa'] })
    const err = await rejectionOf(runHandler(trainLora, params(), t))
    expect(err).toBeInstanceOf(NonRetryableError)
    expect(err.code).toBe('ENGINE_USAGE_ERROR')
    expect(err.message).toContain('train_network.py: error: unrecognized arguments: --sdpa')
  })

  it('a run that exits 0 without lora.safetensors is an error, not an empty success', async () => {
    const t = await setup({ noOutput: true })
    const err = await rejectionOf(runHandler(trainLora, params(), t))
    expect(err).toBeInstanceOf(RetryableError)
    expect(err.code).toBe('ENGINE_NO_OUTPUT')
  })

  it.each([
    ['cancelled', false],
    ['timed out, with a trainer that ignores SIGTERM', true],
  ])(
    '%s mid-run: the launcher and the trainer are gone when the handler returns, nothing stored',
    async (_what, ignoreSigterm) => {
      const t = await setup({ stepMs: 50, hangAtStep: 1, ignoreSigterm })
      const reason = new Error(ignoreSigterm ? 'timed out' : 'cancelled')
      const record = t.ctx.progress
      let abortedAt = 0
      t.ctx.progress = (p, m) => {
        record(p, m)
        if (m?.includes('loss=') && !abortedAt) {
          abortedAt = performance.now()
          t.abort(reason)
        }
      }
      const err = await rejectionOf(runHandler(trainLora, params({ epochs: 1 }), t))
      const took = performance.now() - abortedAt
      expect(err).toBe(reason)
      const calls = await kohya.calls()
      expect(calls.map((c) => c.role)).toEqual(['launcher', 'trainer'])
      for (const c of calls) expect(await processGone(c.pid)).toBe(true)
      expect(t.artifacts.files.size).toBe(0)
      expect(t.progress.at(-1)?.message).toBe('Epoch 1/1 - loss=1.12')
      // SIGTERM ends the stand-in at once; one that ignores it waits out the 5 s grace, then SIGKILL.
      if (ignoreSigterm) expect(took).toBeGreaterThan(4900)
      expect(took).toBeLessThan(ignoreSigterm ? 8000 : 2000)
    },
  )
})
