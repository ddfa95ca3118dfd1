/**
 * Carries a lifecycle decision out, in the order the product promises: the row first (guarded), then,
 * only if the row was written, the event, then the event's place in the SQL history. A client that sees
 * the event finds the row in that state already, and the history holds every event published.
 */
import type { ProgressEvent, UnsequencedEvent } from '../events.ts'
import type { JobType } from '../params/index.ts'
import type { Counts, Transition } from './lifecycle.ts'

/** Where `apply` writes: injected, so the rules are testable without Redis or Postgres. */
export interface ApplyPorts {
  /** The guarded row write; false when the guard refused it (stale attempt, terminal already). */
  write(t: Transition): Promise<boolean>
  /** Publishes the event (replay log and pub/sub) and returns it with its seq. */
  emit(event: UnsequencedEvent, terminal: boolean): Promise<ProgressEvent>
  /** Keeps a published event in the job's SQL history. */
  record(event: ProgressEvent): Promise<void>
  /** Counts the transition's metric series (a host; the gateway counts none). */
  count?(counts: Counts): void
  /** Removes the files under the job's prefix that no manifest covers. */
  dropPartial?(): Promise<void>
  now?: () => number
}

/**
 * Applies `t` to job `job`; returns whether the row was written (nothing is published when it was not).
 *
 * @example if (await apply({ jobId, type }, decide(outcome, attempt, policy), ports)) log.info('done')
 */
export async function apply(
  job: { jobId: string; type: JobType },
  t: Transition,
  ports: ApplyPorts,
): Promise<boolean> {
  const effects = async () => {
    ports.count?.(t.counts)
    if (t.dropPartial) await ports.dropPartial?.()
  }
  if (t.effects === 'before') await effects()
  if (!(await ports.write(t))) return false
  if (t.effects === 'after') await effects()
  const event = await ports.emit(
    {
      jobId: job.jobId,
      type: job.type,
      status: t.event.status,
      progress: t.event.progress,
      message: t.event.message,
      attempt: t.attempt,
      timestamp: new Date((ports.now ?? Date.now)()).toISOString(),
    },
    t.event.terminal,
  )
  await ports.record(event)
  return true
}
