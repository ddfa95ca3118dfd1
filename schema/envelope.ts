import * as v from 'valibot'
import { JobId } from './common.ts'
import { jsonSafe } from './json-safety.ts'
import { JobType } from './params/index.ts'

/**
 * The largest BullMQ priority (`2 ** 21 - 1`; 1 is the highest priority). BullMQ throws on anything above,
 * after the gateway has stored the row and emitted the queued event, so the schema stops it first.
 */
export const MAX_PRIORITY = 2_097_151

/** The most VRAM a job may ask for, in MiB (larger than any GPU made). */
export const MAX_VRAM_MB = 1_048_576

/**
 * A job's own GPU needs, over its handler's `gpu`: the VRAM to reserve for it (MiB) and whether it must
 * have a GPU (or MIG instance) to itself.
 */
export const JobGpu = v.strictObject({
  vramMb: v.optional(v.pipe(v.number(), v.integer(), v.minValue(0), v.maxValue(MAX_VRAM_MB))),
  exclusive: v.optional(v.boolean()),
})
export type JobGpu = v.InferOutput<typeof JobGpu>

/** Per-job options that override the handler's defaults. */
export const JobOptions = {
  gpu: v.optional(JobGpu),
  priority: v.optional(v.pipe(v.number(), v.integer(), v.minValue(1), v.maxValue(MAX_PRIORITY))),
  timeoutSec: v.optional(v.pipe(v.number(), v.integer(), v.minValue(1), v.maxValue(7 * 86_400))),
  maxAttempts: v.optional(v.pipe(v.number(), v.integer(), v.minValue(1), v.maxValue(20))),
}

/**
 * The queue payload of queue `gpu-jobs` (BullMQ job name = type, job id = jobId). Params are checked
 * against the type's schema separately (`PARAMS_BY_TYPE`), so a producer in another language can use the
 * generated JSON Schema of this envelope.
 *
 * @example
 * { "jobId": "abc", "type": "train_lora", "params": { "baseModel": "sd15", "datasetPath": "ds1" },
 *   "artifacts": { "outputPrefix": "loras/abc" } }
 */
export const JobEnvelope = v.pipe(
  // The payload as sent (the records below drop keys such as `constructor`): what the gateway refuses at
  // submission (json-safety.ts) is refused here too, for jobs from other producers.
  v.unknown(),
  jsonSafe(),
  v.object({
    jobId: JobId,
    type: JobType,
    params: v.record(v.string(), v.unknown()),
    artifacts: v.optional(v.object({ outputPrefix: v.pipe(v.string(), v.minLength(1), v.maxLength(512)) })),
    owner: v.optional(v.nullable(v.string())),
    ...JobOptions,
  }),
)
export type JobEnvelope = v.InferOutput<typeof JobEnvelope>
