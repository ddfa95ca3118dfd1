import * as v from 'valibot'
import { JobId, JobStatus, Progress } from './common.ts'
import { JobType } from './params/index.ts'

/**
 * Numbers a handler reports beside its progress (`ctx.progress(pct, message, { loss: 0.34 })`), e.g. for a
 * loss curve: at most 16, named like identifiers, finite.
 */
export const ProgressMetrics = v.pipe(
  v.record(
    v.pipe(
      v.string(),
      v.regex(/^[A-Za-z_][A-Za-z0-9_.:-]{0,63}$/, 'must be a name of up to 64 letters, digits, _ . : -'),
    ),
    v.pipe(v.number(), v.finite('must be a finite number')),
  ),
  v.check((m) => Object.keys(m).length <= 16, 'must have at most 16 entries'),
)
export type ProgressMetrics = v.InferOutput<typeof ProgressMetrics>

/**
 * A progress event, as published on Redis channel `progress:<jobId>` and sent over WebSocket and SSE.
 * The first five fields are the published shape; `seq` rises by one per event of a job.
 */
export const ProgressEvent = v.object({
  jobId: JobId,
  status: JobStatus,
  progress: Progress,
  message: v.string(),
  timestamp: v.pipe(v.string(), v.isoTimestamp()),
  seq: v.pipe(v.number(), v.integer(), v.minValue(1)),
  type: JobType,
  attempt: v.pipe(v.number(), v.integer(), v.minValue(0)),
  /** Optional, additive: only on the progress events of a handler that reports metrics. */
  metrics: v.optional(ProgressMetrics),
})
export type ProgressEvent = v.InferOutput<typeof ProgressEvent>

/** An event before the replay log gives it its `seq`. */
export type UnsequencedEvent = Omit<ProgressEvent, 'seq'>

/**
 * A resume point: every event with a greater seq is wanted. Bounded by the largest integer a JSON number
 * holds exactly (2^53 - 1): beyond it `String(after)` is not the number (`1e+21`) and Redis refuses the id.
 */
export const SeqAfter = v.pipe(
  v.number(),
  v.integer('must be a whole number'),
  v.minValue(0, 'must not be negative'),
  v.maxValue(Number.MAX_SAFE_INTEGER, `must be at most ${Number.MAX_SAFE_INTEGER}`),
)

/** The same resume point as text (`?after=` or `Last-Event-ID`): decimal digits only, then `SeqAfter`. */
export const SeqAfterText = v.pipe(
  v.string(),
  v.regex(/^\d{1,16}$/, `must be a whole number from 0 to ${Number.MAX_SAFE_INTEGER}`),
  v.transform(Number),
  SeqAfter,
)

/** WebSocket messages from a client. */
export const WsClientMessage = v.variant('op', [
  v.object({
    op: v.literal('subscribe'),
    jobId: JobId,
    after: v.optional(SeqAfter),
  }),
  v.object({ op: v.literal('unsubscribe'), jobId: JobId }),
])
export type WsClientMessage = v.InferOutput<typeof WsClientMessage>

/** WebSocket messages to a client that are not progress events. */
export type WsServerNotice =
  | { op: 'subscribed'; jobId: string }
  | { op: 'unsubscribed'; jobId: string }
  | { op: 'error'; jobId?: string; error: { code: string; message: string } }
