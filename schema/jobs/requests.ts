/**
 * The lifecycle steps a producer (the gateway) takes itself, with the invariant enforced: the row, then
 * the event, then the history. A host's steps are in gpu-host/attempt.ts; both decide in lifecycle.ts.
 */
import type { Redis } from 'ioredis'
import type { ProgressEvent } from '../events.ts'
import type { JobType } from '../params/index.ts'
import { emitEvent, emitFirstEvents } from '../progress-log.ts'
import { type ApplyPorts, apply } from './apply.ts'
import { decide } from './lifecycle.ts'
import type { JobRecords } from './records.ts'

/** Wraps a Redis call (the gateway's turns a lost connection into a 503 naming Redis). */
export type RedisCall = <T>(fn: () => Promise<T>) => Promise<T>

export interface EventDeps {
  redis: Redis
  /** The history writer: a `JobRecords`, or anything with its `recordEvent` (the gateway's JobStore). */
  records: Pick<JobRecords, 'recordEvent'>
  onRedis?: RedisCall
}

/** The event half of `apply`'s ports: publish on Redis (replay log, pub/sub), then keep in the history. */
export const eventPorts = ({ redis, records, onRedis = (fn) => fn() }: EventDeps) =>
  ({
    emit: (event, terminal) => onRedis(() => emitEvent(redis, event, { terminal })),
    record: (event) => records.recordEvent(event),
  }) satisfies Pick<ApplyPorts, 'emit' | 'record'>

/**
 * Submitted jobs' `queued` events, once their BullMQ add succeeded, then their place in the history (one
 * Redis round trip and one statement for all of them); a job is skipped (null) when a host was quicker and
 * emitted its first event already (its seq must come first). In the jobs' order.
 *
 * @example await announceQueued({ redis, records: store }, [{ jobId, type }])
 */
export async function announceQueued(
  {
    redis,
    records,
    onRedis = (fn) => fn(),
  }: Omit<EventDeps, 'records'> & {
    records: Pick<JobRecords, 'recordEvents'>
  },
  jobs: { jobId: string; type: JobType }[],
): Promise<(ProgressEvent | null)[]> {
  const timestamp = new Date().toISOString()
  const events = await onRedis(() =>
    emitFirstEvents(
      redis,
      jobs.map(({ jobId, type }) => ({
        jobId,
        type,
        status: 'queued' as const,
        progress: 0,
        message: 'queued',
        attempt: 0,
        timestamp,
      })),
    ),
  )
  await records.recordEvents(events.filter((e): e is ProgressEvent => e !== null))
  return events
}

/**
 * A client's cancel of a job no host runs (queued, or waiting to retry): the row cancelled with the
 * typed error, then the terminal event, then the history. False when the row was final already (a host
 * or another cancel was quicker): nothing is published then.
 *
 * @example await cancelByRequest({ redis, records: store, onRedis }, freshRow)
 */
export function cancelByRequest(
  deps: EventDeps & { records: Pick<JobRecords, 'recordEvent' | 'cancel'> },
  row: { id: string; type: JobType; progress: number; attempt: number; maxAttempts: number },
): Promise<boolean> {
  // A cancel never retries: no backoff applies.
  const t = decide({ kind: 'cancel-request', progress: row.progress }, row.attempt, {
    maxAttempts: row.maxAttempts,
    retry: { baseMs: 0, maxMs: 0 },
  })
  return apply({ jobId: row.id, type: row.type }, t, {
    write: (w) => {
      if (!w.error) throw new Error('a cancel transition carries its error')
      return deps.records.cancel(row.id, w.error, w.message)
    },
    ...eventPorts(deps),
  })
}
