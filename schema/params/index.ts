import * as v from 'valibot'
import { RenderVideoParams } from './render-video.ts'
import { TrainLoraParams } from './train-lora.ts'
import { TrainVoiceParams } from './train-voice.ts'

export * from './render-video.ts'
export * from './train-lora.ts'
export * from './train-voice.ts'

export const JOB_TYPES = ['train_lora', 'train_voice', 'render_video'] as const
export const JobType = v.picklist(JOB_TYPES, 'must be one of train_lora, train_voice, render_video')
export type JobType = v.InferOutput<typeof JobType>

/** The params schema of each job type. */
export const PARAMS_BY_TYPE = {
  train_lora: TrainLoraParams,
  train_voice: TrainVoiceParams,
  render_video: RenderVideoParams,
} as const satisfies Record<JobType, v.GenericSchema>

export type ParamsOf<T extends JobType> = v.InferOutput<(typeof PARAMS_BY_TYPE)[T]>

/** S3 key prefix of each job type's artifacts: `<prefix>/<jobId>/...`. */
export const ARTIFACT_PREFIX: Record<JobType, string> = {
  train_lora: 'loras',
  train_voice: 'voices',
  render_video: 'videos',
}
export const outputPrefixFor = (type: JobType, jobId: string): string => `${ARTIFACT_PREFIX[type]}/${jobId}`

/**
 * Each type's default limits, shared by the gateway (shown before a host takes the job) and the handlers
 * (which use them as their `timeoutSec` and `maxAttempts`). A request may override both.
 */
export const TYPE_DEFAULTS: Record<JobType, { timeoutSec: number; maxAttempts: number; vramMb: number }> = {
  train_lora: { timeoutSec: 6 * 3600, maxAttempts: 3, vramMb: 12_000 },
  train_voice: { timeoutSec: 4 * 3600, maxAttempts: 3, vramMb: 8_000 },
  render_video: { timeoutSec: 2 * 3600, maxAttempts: 2, vramMb: 16_000 },
}
