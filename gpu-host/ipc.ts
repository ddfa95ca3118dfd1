import * as v from 'valibot'
import { ArtifactRecord } from '../schema/api.ts'
import { JobError } from '../schema/common.ts'
import { EngineSettings } from '../schema/engines.ts'
import { ProgressMetrics } from '../schema/events.ts'
import { JobType } from '../schema/params/index.ts'

/** Host -> child. */
export const ParentMessage = v.variant('kind', [
  v.object({
    kind: v.literal('start'),
    job: v.object({ jobId: v.string(), type: JobType, params: v.unknown(), attempt: v.number() }),
    gpu: v.object({
      index: v.nullable(v.number()),
      uuid: v.nullable(v.string()),
      name: v.nullable(v.string()),
      vramTotalMb: v.nullable(v.number()),
      vramReservedMb: v.optional(v.nullable(v.number())),
    }),
    paths: v.object({ scratch: v.string(), models: v.string(), data: v.string() }),
    engines: EngineSettings,
    /** A module whose default export is the handler to run instead of the registry's (test fixtures). */
    handlerModule: v.optional(v.string()),
  }),
  v.object({ kind: v.literal('abort'), reason: v.picklist(['cancelled', 'timeout', 'shutdown']) }),
  /** The host stored the artifact of request `id`. */
  v.object({ kind: v.literal('artifact-stored'), id: v.number(), record: ArtifactRecord }),
  /** The host did not store it: a bad path (not retryable) or storage trouble (retryable). */
  v.object({
    kind: v.literal('artifact-refused'),
    id: v.number(),
    message: v.string(),
    retryable: v.boolean(),
  }),
  /** The host streamed the model object of request `id` into the file the child named. */
  v.object({ kind: v.literal('model-fetched'), id: v.number(), size: v.number(), sha256: v.string() }),
  /** The host did not: a source it refuses or an object that is missing (not retryable), or S3 trouble. */
  v.object({
    kind: v.literal('model-fetch-failed'),
    id: v.number(),
    message: v.string(),
    retryable: v.boolean(),
  }),
])
export type ParentMessage = v.InferOutput<typeof ParentMessage>

/** A job process's failure: the job's error (code, reason, message), its class name and whether to retry. */
export const ChildError = v.object({ name: v.string(), ...JobError.entries, retryable: v.boolean() })
export type ChildError = v.InferOutput<typeof ChildError>

/** Child -> host. Every message is validated on arrival; a child that sends garbage is killed. */
export const ChildMessage = v.variant('kind', [
  v.object({ kind: v.literal('ready') }),
  v.object({ kind: v.literal('started') }),
  v.object({
    kind: v.literal('progress'),
    percent: v.pipe(v.number(), v.minValue(0), v.maxValue(100)),
    message: v.optional(v.pipe(v.string(), v.maxLength(2000))),
    metrics: v.optional(ProgressMetrics),
  }),
  v.object({
    kind: v.literal('log'),
    level: v.picklist(['debug', 'info', 'warn', 'error']),
    msg: v.pipe(v.string(), v.maxLength(10_000)),
    fields: v.optional(v.record(v.string(), v.unknown())),
  }),
  /**
   * Store the file `file` (inside the job's scratch dir) as artifact `path`: the host streams it to the
   * sink (S3), hashes it, and answers `artifact-stored` or `artifact-refused` with the same `id`. The job
   * process holds no storage credential.
   */
  v.object({
    kind: v.literal('artifact'),
    id: v.number(),
    path: v.pipe(v.string(), v.maxLength(4096)),
    file: v.pipe(v.string(), v.maxLength(4096)),
    contentType: v.optional(v.pipe(v.string(), v.maxLength(255))),
  }),
  /**
   * Fetch `s3://bucket/key` into `file` (a new temp file beside the model, under MODELS_DIR) for
   * `ctx.models.ensure`: the host checks the source against its policy and the file against its own
   * MODELS_DIR, streams the object (never whole in memory), hashes it, and answers `model-fetched` or
   * `model-fetch-failed` with the same `id`. The job process holds no S3 credential.
   */
  v.object({
    kind: v.literal('model-fetch'),
    id: v.number(),
    model: v.pipe(v.string(), v.maxLength(512)),
    bucket: v.pipe(v.string(), v.maxLength(63)),
    key: v.pipe(v.string(), v.maxLength(1024)),
    file: v.pipe(v.string(), v.maxLength(4096)),
  }),
  /** One `ctx.models.ensure` outcome, for the host's metrics: a hit, or a miss with the bytes fetched. */
  v.object({
    kind: v.literal('model-cache'),
    model: v.pipe(v.string(), v.maxLength(512)),
    outcome: v.picklist(['hit', 'miss']),
    bytes: v.pipe(v.number(), v.integer(), v.minValue(0), v.maxValue(Number.MAX_SAFE_INTEGER)),
  }),
  v.object({ kind: v.literal('result'), result: v.unknown() }),
  v.object({ kind: v.literal('error'), error: ChildError }),
])
export type ChildMessage = v.InferOutput<typeof ChildMessage>
