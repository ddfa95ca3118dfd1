import { describe, expect, it } from 'vitest'
import { sd15LoraModules } from '../formats/kohya-lora.ts'
import { readSafetensors, tensorValues } from '../formats/safetensors.ts'
import { NonRetryableError } from '../sdk/errors.ts'
import { runHandler } from '../sdk/testing.ts'
import {
  expectEpochProgress,
  expectStopsAfterProgress,
  handlerSuite,
  itRefusesBadDatasets,
  rejectionOf,
} from '../test-support.ts'
import trainLora, { CONFIG_FILE, LORA_FILE } from './index.ts'

const suite = handlerSuite({ type: 'train_lora', jobId: 'lora-job-1' })
const { context } = suite

const params = (extra: Record<string, unknown> = {}) => ({
  baseModel: 'runwayml/stable-diffusion-v1-5',
  datasetPath: 'lora_ds',
  epochs: 3,
  ...extra,
})

describe('train_lora (simulate)', () => {
  it.each([4, 16])('trains a rank-%i LoRA and stores a valid kohya safetensors file', async (rank) => {
    const t = await context()
    const result = await runHandler(trainLora, params({ rank }), t)

    expect(result).toMatchObject({
      engine: 'simulate',
      simulated: true,
      files: [LORA_FILE, CONFIG_FILE],
      steps: 30,
      epochs: 3,
      datasetFiles: 6,
      trainImages: 3,
      rank,
      alpha: 1,
    })
    expect(JSON.parse(JSON.stringify(result))).toEqual(result)

    const bytes = t.artifacts.files.get(LORA_FILE)?.bytes
    expect(bytes).toBeDefined()
    const file = readSafetensors(bytes!)
    expect(file.dataStart % 8).toBe(0)

    const modules = sd15LoraModules()
    const expectedNames = modules.flatMap((m) => [
      `${m.name}.lora_down.weight`,
      `${m.name}.lora_up.weight`,
      `${m.name}.alpha`,
    ])
    expect([...file.tensors.keys()].sort()).toEqual(expectedNames.sort())
    expect(file.tensors.size).toBe((result as { tensors: number }).tensors)

    const shape = (name: string) => file.tensors.get(name)?.shape
    const unet = 'lora_unet_down_blocks_0_attentions_0_transformer_blocks_0'
    expect(shape(`${unet}_attn1_to_q.lora_down.weight`)).toEqual([rank, 320])
    expect(shape(`${unet}_attn1_to_q.lora_up.weight`)).toEqual([320, rank])
    expect(shape(`${unet}_attn1_to_out_0.lora_up.weight`)).toEqual([320, rank])
    expect(shape(`${unet}_attn1_to_q.alpha`)).toEqual([])
    // Cross-attention keys and values read CLIP's 768-wide text embedding.
    expect(shape(`${unet}_attn2_to_k.lora_down.weight`)).toEqual([rank, 768])
    expect(shape(`${unet}_attn2_to_v.lora_up.weight`)).toEqual([320, rank])
    expect(
      shape('lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_v.lora_down.weight'),
    ).toEqual([rank, 640])
    expect(shape('lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_q.lora_up.weight')).toEqual([
      1280,
      rank,
    ])
    expect(
      shape('lora_unet_up_blocks_3_attentions_2_transformer_blocks_0_attn1_to_k.lora_down.weight'),
    ).toEqual([rank, 320])
    expect(shape('lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight')).toEqual([
      rank,
      768,
    ])
    expect(shape('lora_te_text_model_encoder_layers_0_mlp_fc1.lora_up.weight')).toEqual([3072, rank])
    for (const t of file.tensors.values()) expect(t.dtype).toBe('F16')

    expect(tensorValues(bytes!, file, `${unet}_attn1_to_q.alpha`)).toEqual([1])
    const down = tensorValues(bytes!, file, `${unet}_attn2_to_k.lora_down.weight`)
    expect(down.every((x) => Number.isFinite(x) && Math.abs(x) < 0.1)).toBe(true)
    expect(new Set(down).size).toBeGreaterThan(100) // random-looking, not a constant fill

    expect(file.metadata).toMatchObject({
      ss_network_module: 'networks.lora',
      ss_network_dim: String(rank),
      ss_network_alpha: '1',
      ss_sd_model_name: 'runwayml/stable-diffusion-v1-5',
      ss_base_model_version: 'sd_v1',
      ss_num_epochs: '3',
      ss_learning_rate: '0.0001',
      ss_resolution: '(512, 512)',
      simulated: 'true',
      gpu_jobs_engine: 'simulate',
    })

    const config = t.artifacts.files.get(CONFIG_FILE)?.bytes.toString('utf8')
    expect(config).toContain(`network_dim = ${rank}`)
    expect(config).toContain('pretrained_model_name_or_path = "runwayml/stable-diffusion-v1-5"')
    expect(config).toContain('learning_rate = 0.0001')
  })

  it('reports one kohya-style progress event per step, rising to exactly 100', async () => {
    const t = await context()
    const result = (await runHandler(trainLora, params(), t)) as { finalLoss: number }
    const losses = expectEpochProgress(
      t.progress,
      30,
      /^Epoch 1\/3 - loss=0\.\d{4}$/,
      /^Epoch 3\/3 - loss=0\.\d{4}$/,
    )
    expect(result.finalLoss).toBe(losses.at(-1))
  })

  itRefusesBadDatasets(suite, (t, datasetPath) => runHandler(trainLora, params({ datasetPath }), t))

  it('refuses the absolute fixture path outside DATA_DIR too', async () => {
    const t = await context()
    const err = await rejectionOf(runHandler(trainLora, params({ datasetPath: suite.fx.outside }), t))
    expect(err.reason).toBe('invalid_params')
  })

  it('fails clearly, without simulating, when the kohya engine is asked for on a host without KOHYA_DIR', async () => {
    const t = await context()
    const err = await rejectionOf(runHandler(trainLora, params({ engine: 'kohya' }), t))
    expect(err).toBeInstanceOf(NonRetryableError)
    expect(err.reason).toBe('engine_not_configured')
    expect(err.message).toContain('kohya')
    expect(err.message).toContain('KOHYA_DIR')
    expect(t.progress).toHaveLength(0)
    expect(t.artifacts.files.size).toBe(0)
  })

  it('stops promptly when the job is cancelled between steps', async () => {
    const t = await context(5)
    await expectStopsAfterProgress(t, 3, () => runHandler(trainLora, params({ epochs: 100 }), t))
    expect(t.progress.length).toBeLessThanOrEqual(4)
  })

  it('stops promptly when the job is cancelled in the middle of a long step', async () => {
    const t = await context(60_000)
    const reason = new Error('timed out')
    setTimeout(() => t.abort(reason), 30)
    const started = performance.now()
    const err = await rejectionOf(runHandler(trainLora, params(), t))
    expect(err).toBe(reason)
    expect(performance.now() - started).toBeLessThan(2000)
  })
})
