/** What train_lora stores and reads, shared by its engines (simulate and kohya). */
import type { TrainLoraParams } from '../../schema/params/index.ts'
import type { Dataset } from '../dataset.ts'

/** Artifact names, relative to `loras/<jobId>/`. */
export const LORA_FILE = 'lora.safetensors'
export const CONFIG_FILE = 'training_config.toml'

/** kohya's default `--network_alpha`; the effective LoRA scale is alpha / rank. */
export const NETWORK_ALPHA = 1

/** Extensions kohya's dataset loader takes as images (train_util.IMAGE_EXTENSIONS, compared lower case). */
export const IMAGE_EXTENSIONS = ['.png', '.jpg', '.jpeg', '.webp', '.bmp']

/** The part of a train_lora result both engines report the same way: what was trained, on what. */
export const loraSummary = (
  p: Pick<TrainLoraParams, 'baseModel' | 'epochs' | 'rank' | 'learningRate' | 'resolution'>,
  dataset: Pick<Dataset, 'files'>,
) => ({
  baseModel: p.baseModel,
  epochs: p.epochs,
  datasetFiles: dataset.files,
  rank: p.rank,
  alpha: NETWORK_ALPHA,
  learningRate: p.learningRate,
  resolution: p.resolution,
})
