/**
 * train_lora against the REAL kohya sd-scripts (`npm run test:engines`), skipped unless KOHYA_DIR, and
 * MODELS_DIR are set (KOHYA_PYTHON too, unless `python3` is sd-scripts' Python). MODELS_DIR must hold the
 * SD1.5-shaped model KOHYA_TEST_MODEL (default `tiny-sd15`) and `kohya/tokenizers`. The dataset is made
 * here: two 64x64 PNGs with captions. On a CPU a run takes about a minute and 7 GB of RAM.
 *
 *   source /work/lab/env.sh  # or: KOHYA_DIR=/work/lab/sd-scripts KOHYA_PYTHON=/work/lab/kohya-venv/bin/python MODELS_DIR=/work/lab/models
 *   npx vitest run --config vitest.engines.config.ts tests/engines/real/kohya.test.ts
 */
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { crc32, deflateSync } from 'node:zlib'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createTestContext, runHandler, type TestContext } from '../../../functions/sdk/testing.ts'
import { expectProgressToEndAt100, rejectionOf } from '../../../functions/test-support.ts'
import trainLora, { CONFIG_FILE, LORA_FILE } from '../../../functions/train_lora/index.ts'
import { expectKohyaLora } from '../../helpers/kohya-lora.ts'

const { KOHYA_DIR, MODELS_DIR } = process.env
const KOHYA_PYTHON = process.env.KOHYA_PYTHON ?? 'python3'
const MODEL = process.env.KOHYA_TEST_MODEL ?? 'tiny-sd15'
const skip = !KOHYA_DIR || !MODELS_DIR
const why = skip
  ? 'set KOHYA_DIR (an sd-scripts checkout), KOHYA_PYTHON and MODELS_DIR to run against real kohya'
  : ''

/** A 64x64 RGB PNG of one colour with a square of another (zlib and CRC from node:zlib). */
function png(bg: [number, number, number], fg: [number, number, number]): Buffer {
  const size = 64
  const raw = Buffer.alloc((size * 3 + 1) * size)
  for (let y = 0; y < size; y++) {
    raw[y * (size * 3 + 1)] = 0 // filter: none
    for (let x = 0; x < size; x++) {
      const c = x > 16 && x < 48 && y > 16 && y < 48 ? fg : bg
      raw.set(c, y * (size * 3 + 1) + 1 + x * 3)
    }
  }
  const chunk = (type: string, data: Buffer) => {
    const len = Buffer.alloc(4)
    len.writeUInt32BE(data.length)
    const body = Buffer.concat([Buffer.from(type, 'ascii'), data])
    const crc = Buffer.alloc(4)
    crc.writeUInt32BE(crc32(body))
    return Buffer.concat([len, body, crc])
  }
  const ihdr = Buffer.alloc(13)
  ihdr.writeUInt32BE(size, 0)
  ihdr.writeUInt32BE(size, 4)
  ihdr.set([8, 2, 0, 0, 0], 8) // 8-bit RGB
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk('IHDR', ihdr),
    chunk('IDAT', deflateSync(raw)),
    chunk('IEND', Buffer.alloc(0)),
  ])
}

/** Live processes whose command line mentions `needle`, from /proc. */
async function processesMentioning(needle: string): Promise<number[]> {
  const { readdir } = await import('node:fs/promises')
  const found: number[] = []
  for (const name of await readdir('/proc')) {
    if (!/^\d+$/.test(name)) continue
    const cmd = await readFile(`/proc/${name}/cmdline`, 'utf8').catch(() => '')
    const stat = await readFile(`/proc/${name}/stat`, 'utf8').catch(() => '')
    const state = stat.slice(stat.lastIndexOf(')') + 2).split(' ')[0]
    if (cmd.includes(needle) && state !== 'Z') found.push(Number(name))
  }
  return found
}

describe.skipIf(skip)(`train_lora on real kohya sd-scripts${why ? ` (skipped: ${why})` : ''}`, () => {
  let dataDir: string
  const contexts: TestContext[] = []
  const context = async (jobId: string) => {
    const t = await createTestContext({
      type: 'train_lora',
      jobId,
      dataDir,
      modelsDir: MODELS_DIR,
      kohyaDir: KOHYA_DIR,
      kohyaPython: KOHYA_PYTHON,
    })
    contexts.push(t)
    return t
  }
  const params = {
    engine: 'kohya',
    baseModel: MODEL,
    datasetPath: 'tiny',
    epochs: 1,
    rank: 4,
    resolution: 64,
  }

  beforeAll(async () => {
    dataDir = await mkdtemp(path.join(tmpdir(), 'kohya-real-data-'))
    const dir = path.join(dataDir, 'tiny', '1_tinyobj')
    await mkdir(dir, { recursive: true })
    await writeFile(path.join(dir, '00.png'), png([235, 235, 235], [200, 40, 40]))
    await writeFile(path.join(dir, '00.txt'), 'tinyobj, a red square\n')
    await writeFile(path.join(dir, '01.png'), png([235, 235, 235], [40, 60, 200]))
    await writeFile(path.join(dir, '01.txt'), 'tinyobj, a blue square\n')
  })
  afterAll(async () => {
    await Promise.all(contexts.map((t) => t.cleanup()))
    await rm(dataDir, { recursive: true, force: true })
  })

  it("trains a tiny LoRA: lora.safetensors with kohya's ss_* metadata, progress from its bar", async () => {
    const t = await context('kohya-real-1')
    const started = performance.now()
    const result = await runHandler(trainLora, params, t)
    const seconds = (performance.now() - started) / 1000
    console.log(`real kohya run: ${seconds.toFixed(1)} s`, JSON.stringify(result))
    console.log(t.progress.map((p) => `${p.percent} ${p.message}`).join('\n'))

    expect(result).toMatchObject({
      engine: 'kohya',
      simulated: false,
      steps: 2,
      rank: 4,
      mixedPrecision: 'no',
    })
    // With --dataset_config kohya describes the dataset in ss_datasets.
    const lora = expectKohyaLora(
      t.artifacts.files.get(LORA_FILE)?.bytes,
      { ss_network_dim: '4', ss_steps: '2', ss_num_train_images: '2', ss_mixed_precision: 'no' },
      {
        resolution: [64, 64],
        num_train_images: 2,
        subsets: [{ image_dir: '1_tinyobj', num_repeats: 1, class_tokens: 'tinyobj' }],
      },
    )
    expect(JSON.parse(lora.metadata.ss_dataset_dirs ?? '')).toEqual({
      '1_tinyobj': { n_repeats: 1, img_count: 2 },
    })
    expect(lora.tensors.size).toBeGreaterThan(0)
    expect(
      [...lora.tensors.keys()].every((k) =>
        /^lora_(unet|te)_.*\.(lora_down\.weight|lora_up\.weight|alpha)$/.test(k),
      ),
    ).toBe(true)
    expect(t.artifacts.files.get(CONFIG_FILE)?.bytes.toString('utf8')).toContain('network_dim = 4')
    expectProgressToEndAt100(t.progress)
    expect(t.progress.some((p) => /^Epoch 1\/1 - loss=[\d.]+$/.test(p.message ?? ''))).toBe(true)
    expect(t.progress.some((p) => p.message === 'saving checkpoint: lora.safetensors')).toBe(true)
  })

  it('cancelled mid-training: accelerate and the trainer are gone at once, nothing stored', async () => {
    const t = await context('kohya-real-2')
    const reason = new Error('cancelled by test')
    let abortedAt = 0
    const record = t.ctx.progress
    t.ctx.progress = (p, m) => {
      record(p, m)
      // At the first loss kohya is mid-epoch: 50 epochs of 2 steps would take minutes more.
      if (m?.includes('loss=') && !abortedAt) {
        abortedAt = performance.now()
        t.abort(reason)
      }
    }
    const started = performance.now()
    const err = await rejectionOf(runHandler(trainLora, { ...params, epochs: 50 }, t))
    const now = performance.now()
    console.log(
      `real kohya cancel: aborted ${((abortedAt - started) / 1000).toFixed(1)} s after start, returned ${((now - abortedAt) / 1000).toFixed(2)} s after the abort`,
    )
    expect(abortedAt).toBeGreaterThan(0)
    expect(now - abortedAt).toBeLessThan(6000)
    expect(err).toBe(reason)
    expect(await processesMentioning(t.ctx.paths.scratch)).toEqual([])
    expect(t.artifacts.files.size).toBe(0)
  })
})
