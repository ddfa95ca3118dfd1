import { Readable } from 'node:stream'
import { JOB_CATALOG, type TrainLoraParams } from '../../schema/params/index.ts'
import { countByExtension, type Dataset, trainOnDataset } from '../dataset.ts'
import { sd15LoraModules, sd15LoraTensors } from '../formats/kohya-lora.ts'
import { encodeSafetensors } from '../formats/safetensors.ts'
import type { HandlerContext } from '../sdk/context.ts'
import { defineHandler, engineResult } from '../sdk/define.ts'
import { reportAndPrint, STEPS_PER_EPOCH, simulateTraining } from '../simulate.ts'
import { trainWithKohya } from './kohya.ts'
import { CONFIG_FILE, IMAGE_EXTENSIONS, LORA_FILE, loraSummary, NETWORK_ALPHA } from './outputs.ts'

export { CONFIG_FILE, LORA_FILE }

/**
 * LoRA fine-tuning. Engines: `kohya` (sd-scripts `train_network.py` on the real model, see ./kohya.ts) and
 * `simulate`, which runs `epochs x 10` timed steps and writes a valid kohya-style SD1.5 LoRA
 * (`lora.safetensors`, marked `simulated` in its metadata) and the matching `training_config.toml`.
 */
export default defineHandler({
  type: 'train_lora',
  run: trainOnDataset({ simulate, kohya: trainWithKohya }),
})

async function simulate(p: TrainLoraParams, dataset: Dataset, ctx: HandlerContext) {
  const images = countByExtension(dataset, IMAGE_EXTENSIONS)
  const startedAt = Date.now()
  reportAndPrint(
    ctx,
    0,
    `running training (simulated): ${dataset.files} files, ${p.epochs} epochs, ${p.epochs * STEPS_PER_EPOCH} steps`,
  )
  const { totalSteps, finalLoss } = await simulateTraining(ctx, {
    epochs: p.epochs,
    vramMb: JOB_CATALOG.train_lora.defaults.vramMb,
    digits: 4,
    // kohya's smoothed avr_loss for a LoRA starts around 0.3 and settles near 0.07.
    loss: { start: 0.34, floor: 0.07 },
    message: ({ epoch, loss }) => `Epoch ${epoch}/${p.epochs} - loss=${loss}`,
  })

  const metadata: Record<string, string> = {
    ss_network_module: 'networks.lora',
    ss_network_dim: String(p.rank),
    ss_network_alpha: String(NETWORK_ALPHA),
    // The tensors follow the SD1.5 layout whatever baseModel names, so the version says what the file is.
    ss_base_model_version: 'sd_v1',
    ss_sd_model_name: p.baseModel,
    ss_v2: 'False',
    ss_num_epochs: String(p.epochs),
    ss_epoch: String(p.epochs),
    ss_steps: String(totalSteps),
    ss_max_train_steps: String(totalSteps),
    ss_learning_rate: String(p.learningRate),
    ss_unet_lr: String(p.learningRate),
    ss_text_encoder_lr: String(p.learningRate),
    ss_resolution: `(${p.resolution}, ${p.resolution})`,
    ss_num_train_images: String(images),
    ss_mixed_precision: 'fp16',
    ss_optimizer: 'bitsandbytes.optim.adamw.AdamW8bit',
    ss_lr_scheduler: 'constant',
    ss_output_name: 'lora',
    ss_training_started_at: String(startedAt / 1000),
    ss_training_finished_at: String(Date.now() / 1000),
    ss_final_loss: String(finalLoss),
    simulated: 'true',
    gpu_jobs_engine: 'simulate',
  }
  const tensors = sd15LoraTensors({ rank: p.rank, alpha: NETWORK_ALPHA, seed: ctx.jobId })
  reportAndPrint(ctx, 97, `saving checkpoint: ${LORA_FILE}`)
  const lora = await ctx.artifacts.put(LORA_FILE, Readable.from(encodeSafetensors(tensors, metadata)))
  await ctx.artifacts.put(CONFIG_FILE, trainingConfig(p))
  reportAndPrint(ctx, 100, `model saved. ${LORA_FILE} (${sd15LoraModules().length} modules, rank ${p.rank})`)

  return {
    ...engineResult('simulate', [LORA_FILE, CONFIG_FILE]),
    ...loraSummary(p, dataset),
    steps: totalSteps,
    trainImages: images,
    finalLoss,
    tensors: Object.keys(tensors).length,
    loraBytes: lora.size,
  }
}

const tomlString = (s: string): string => JSON.stringify(s) // JSON's escapes are all valid in a TOML basic string
const tomlFloat = (x: number): string => (Number.isInteger(x) ? x.toFixed(1) : String(x))

/**
 * The hyperparameters as kohya's `--config_file` TOML, as the kohya_ss GUI writes it beside its output, so
 * a user can rerun the same training for real with `train_network.py --config_file training_config.toml`.
 */
function trainingConfig(p: TrainLoraParams): string {
  return [
    '# Written by gpu-jobs for a simulated run (engine "simulate"): no model was trained.',
    `pretrained_model_name_or_path = ${tomlString(p.baseModel)}`,
    `train_data_dir = ${tomlString(p.datasetPath)}`,
    `output_name = ${tomlString('lora')}`,
    `save_model_as = ${tomlString('safetensors')}`,
    `network_module = ${tomlString('networks.lora')}`,
    `network_dim = ${p.rank}`,
    `network_alpha = ${NETWORK_ALPHA}`,
    `learning_rate = ${tomlFloat(p.learningRate)}`,
    `max_train_epochs = ${p.epochs}`,
    `resolution = ${tomlString(`${p.resolution},${p.resolution}`)}`,
    `train_batch_size = 1`,
    `mixed_precision = ${tomlString('fp16')}`,
    `save_precision = ${tomlString('fp16')}`,
    `optimizer_type = ${tomlString('AdamW8bit')}`,
    `lr_scheduler = ${tomlString('constant')}`,
    `save_every_n_epochs = 1`,
    '',
  ].join('\n')
}
