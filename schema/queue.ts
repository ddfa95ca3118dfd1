/**
 * The queue's overview: BullMQ's states as the host samples them into its metrics and the gateway serves
 * them in `GET /api/queue`, the oldest waiting job, and the body of that route.
 */
import type { Queue } from 'bullmq'
import * as v from 'valibot'
import { JOB_TYPES, type JobType } from './params/index.ts'

/** BullMQ job states, as `getJobCounts` names them (and `gpu_worker_queue_jobs{state}` labels them). */
export const QUEUE_STATES = [
  'waiting',
  'active',
  'delayed',
  'failed',
  'prioritized',
  'completed',
  'waiting-children',
] as const
export type QueueState = (typeof QUEUE_STATES)[number]

/**
 * When the oldest job that waits for a host was added (ms), or null when none waits: the oldest of the
 * plain waiting list (its tail) and of the first prioritized ones.
 *
 * @example const at = await oldestWaitingAt(queue); const ageSec = at === null ? null : (Date.now() - at) / 1000
 */
export async function oldestWaitingAt(queue: Queue): Promise<number | null> {
  const [waiting, prioritized] = await Promise.all([
    queue.getJobs(['wait'], -1, -1),
    queue.getJobs(['prioritized'], 0, 50),
  ])
  const times = [...waiting, ...prioritized].flatMap((j) => (j?.timestamp ? [j.timestamp] : []))
  return times.length > 0 ? Math.min(...times) : null
}

const count = v.pipe(v.number(), v.integer(), v.minValue(0))

/** Unfinished jobs of one type, from their rows. */
export const TypeCounts = v.object({ queued: count, running: count, retrying: count })
export type TypeCounts = v.InferOutput<typeof TypeCounts>

/** `GET /api/queue`. */
export const QueueBody = v.object({
  /** BullMQ's counts by state: the whole fleet's, whoever asks. */
  byState: v.object(
    Object.fromEntries(QUEUE_STATES.map((s) => [s, count])) as Record<QueueState, typeof count>,
  ),
  /** Unfinished jobs by type (Postgres); with API tokens, the caller's own. */
  byType: v.object(
    Object.fromEntries(JOB_TYPES.map((t) => [t, TypeCounts])) as Record<JobType, typeof TypeCounts>,
  ),
  /**
   * Age of the oldest job waiting for a host, in seconds (null: none waits): BullMQ's waiting ones and the
   * `queued` rows (one a host put back, BullMQ's `delayed`, waits all the same).
   */
  oldestWaitingSec: v.nullable(v.number()),
  /** Jobs that ended in the last hour (Postgres); with API tokens, the caller's own. */
  lastHour: v.object({ completed: count, failed: count }),
})
export type QueueBody = v.InferOutput<typeof QueueBody>
