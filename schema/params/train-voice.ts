import * as v from 'valibot'
import { DatasetPath, Epochs } from './shared.ts'

export const TrainVoiceParams = v.strictObject({
  speakerName: v.pipe(v.string(), v.minLength(1), v.maxLength(128)),
  datasetPath: DatasetPath,
  epochs: v.optional(Epochs, 10),
  language: v.optional(
    v.pipe(v.string(), v.regex(/^[a-z]{2,3}(-[A-Za-z0-9]{2,8})?$/, 'must be a language tag such as "en"')),
    'en',
  ),
  engine: v.optional(v.picklist(['simulate', 'f5tts']), 'simulate'),
})
export type TrainVoiceParams = v.InferOutput<typeof TrainVoiceParams>
