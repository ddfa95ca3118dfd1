import * as v from 'valibot'
import { JobId, JobStatus, Progress } from './common.ts'
import { JobType } from './params/index.ts'

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
})
export type ProgressEvent = v.InferOutput<typeof ProgressEvent>

/** An event before the replay log gives it its `seq`. */
export type UnsequencedEvent = Omit<ProgressEvent, 'seq'>

/** WebSocket messages from a client. */
export const WsClientMessage = v.variant('op', [
  v.object({
    op: v.literal('subscribe'),
    jobId: JobId,
    after: v.optional(v.pipe(v.number(), v.integer(), v.minValue(0))),
  }),
  v.object({ op: v.literal('unsubscribe'), jobId: JobId }),
])
export type WsClientMessage = v.InferOutput<typeof WsClientMessage>

/** WebSocket messages to a client that are not progress events. */
export type WsServerNotice =
  | { op: 'subscribed'; jobId: string }
  | { op: 'unsubscribed'; jobId: string }
  | { op: 'error'; jobId?: string; error: { code: string; message: string } }
