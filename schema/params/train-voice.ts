import * as v from 'valibot'
import { DatasetPath, Epochs, form } from './shared.ts'

/**
 * The pretrained F5-TTS checkpoint a `f5tts` job fine-tunes, relative to MODELS_DIR: F5-TTS v1 Base as the
 * hub publishes it (`SWivid/F5-TTS` `F5TTS_v1_Base/model_1250000.safetensors`), placed on the models volume
 * beforehand, since no engine downloads from a hub at job time.
 */
export const DEFAULT_VOICE_BASE_MODEL = 'f5tts/F5TTS_v1_Base/model_1250000.safetensors'

export const TrainVoiceParams = v.strictObject({
  speakerName: v.pipe(v.string(), v.minLength(1), v.maxLength(128), form({ placeholder: 'ann' })),
  datasetPath: DatasetPath,
  epochs: v.optional(Epochs, 10),
  language: v.optional(
    v.pipe(
      v.string(),
      v.regex(/^[a-z]{2,3}(-[A-Za-z0-9]{2,8})?$/, 'must be a language tag such as "en"'),
      form({ half: true }),
    ),
    'en',
  ),
  /** A checkpoint file under MODELS_DIR (containment is checked when the job runs, symlinks resolved). */
  baseModel: v.optional(
    v.pipe(
      v.string(),
      v.minLength(1),
      v.maxLength(512),
      v.description('A checkpoint file under MODELS_DIR.'),
    ),
    DEFAULT_VOICE_BASE_MODEL,
  ),
  engine: v.optional(v.picklist(['simulate', 'f5tts']), 'simulate'),
})
export type TrainVoiceParams = v.InferOutput<typeof TrainVoiceParams>
