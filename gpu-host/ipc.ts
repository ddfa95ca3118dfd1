import * as v from 'valibot'
import { ErrorReason } from '../schema/common.ts'
import { JobType } from '../schema/params/index.ts'

/** Where the child stores artifacts: straight to S3, or to a folder (`npm run job`). */
export const ArtifactSink = v.variant('kind', [
  v.object({
    kind: v.literal('s3'),
    endpoint: v.string(),
    region: v.string(),
    bucket: v.string(),
    accessKeyId: v.string(),
    secretAccessKey: v.string(),
    prefix: v.string(),
  }),
  v.object({ kind: v.literal('dir'), dir: v.string(), prefix: v.string() }),
])
export type ArtifactSink = v.InferOutput<typeof ArtifactSink>

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
    }),
    paths: v.object({ scratch: v.string(), models: v.string(), data: v.string() }),
    engines: v.object({ simulateStepMs: v.number(), comfyuiUrl: v.optional(v.string()) }),
    sink: ArtifactSink,
    /** A module whose default export is the handler to run instead of the registry's (test fixtures). */
    handlerModule: v.optional(v.string()),
  }),
  v.object({ kind: v.literal('abort'), reason: v.picklist(['cancelled', 'timeout', 'shutdown']) }),
])
export type ParentMessage = v.InferOutput<typeof ParentMessage>

export const ArtifactRecordSchema = v.object({
  path: v.string(),
  key: v.string(),
  size: v.number(),
  sha256: v.string(),
  contentType: v.string(),
})

export const ChildError = v.object({
  name: v.string(),
  message: v.string(),
  code: v.string(),
  reason: ErrorReason,
  retryable: v.boolean(),
})
export type ChildError = v.InferOutput<typeof ChildError>

/** Child -> host. Every message is validated on arrival; a child that sends garbage is killed. */
export const ChildMessage = v.variant('kind', [
  v.object({ kind: v.literal('ready') }),
  v.object({ kind: v.literal('started') }),
  v.object({
    kind: v.literal('progress'),
    percent: v.pipe(v.number(), v.minValue(0), v.maxValue(100)),
    message: v.optional(v.pipe(v.string(), v.maxLength(2000))),
  }),
  v.object({
    kind: v.literal('log'),
    level: v.picklist(['debug', 'info', 'warn', 'error']),
    msg: v.pipe(v.string(), v.maxLength(10_000)),
    fields: v.optional(v.record(v.string(), v.unknown())),
  }),
  v.object({ kind: v.literal('artifact'), record: ArtifactRecordSchema }),
  v.object({ kind: v.literal('result'), result: v.unknown() }),
  v.object({ kind: v.literal('error'), error: ChildError }),
])
export type ChildMessage = v.InferOutput<typeof ChildMessage>
