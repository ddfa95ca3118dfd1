import * as v from 'valibot'
import { DatasetPath, Epochs } from './shared.ts'

export const TrainLoraParams = v.strictObject({
  baseModel: v.pipe(
    v.string(),
    v.minLength(1),
    v.maxLength(512),
    v.description('A file or Diffusers folder under MODELS_DIR.'),
    v.examples(['sd15']),
  ),
  datasetPath: DatasetPath,
  epochs: v.optional(Epochs, 10),
  rank: v.optional(v.pipe(v.number(), v.integer(), v.minValue(1), v.maxValue(1024)), 16),
  learningRate: v.optional(v.pipe(v.number(), v.gtValue(0), v.maxValue(1)), 1e-4),
  resolution: v.optional(v.pipe(v.number(), v.integer(), v.minValue(64), v.maxValue(4096)), 512),
  engine: v.optional(v.picklist(['simulate', 'kohya']), 'simulate'),
})
export type TrainLoraParams = v.InferOutput<typeof TrainLoraParams>
