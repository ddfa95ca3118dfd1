/**
 * The job lifecycle's rules, pure: what an outcome does to a job (`decide`), which row writes are allowed
 * (`mayWrite`), and what happens to the BullMQ job once the row was or was not written (`settle`).
 * `apply.ts` carries a decision out (row, then event, then history); `records.ts` writes the row with SQL
 * guards that mirror `mayWrite`. The GPU host, the gateway's cancel and the reconciler all decide here.
 */
import { type BackoffPolicy, backoffDelay } from '../backoff.ts'
import type { ErrorReason, JobError, JobStatus } from '../common.ts'
import { TERMINAL_STATUSES } from '../common.ts'
import {
  AttemptsExhaustedError,
  CancelledError,
  HostFaultError,
  InvalidJobError,
  type JobFailure,
  LostJobError,
} from './errors.ts'

/** A file of a job's final output, as its manifest lists it. */
export interface ArtifactEntry {
  path: string
  key: string
  size: number
  sha256: string
  contentType: string
}

/** What happened to a job, as its host, gateway or reconciler saw it. */
export type Outcome =
  /** The attempt's process returned a result and its manifest is written. */
  | { kind: 'completed'; result: unknown; artifacts: ArtifactEntry[]; message: string; seconds: number }
  /**
   * The attempt ended badly. Its failure says how: a `cancelled` reason is a cancel while it ran, a
   * `shutdown` one an interruption by this host's shutdown, anything else a failure (retried if it may).
   */
  | { kind: 'failed'; error: JobFailure; progress: number; seconds: number }
  /** A cancel arrived before the attempt's process was started. */
  | { kind: 'cancelled-before-start'; progress: number }
  /** The attempt just started is past the job's budget (earlier ones were interrupted by host failures). */
  | { kind: 'exhausted'; progress: number }
  /** A payload no handler can run: failed at once, without retries. */
  | { kind: 'invalid'; message: string }
  /** The host itself failed while it ran the attempt. */
  | { kind: 'host-fault'; cause: unknown; progress: number }
  /** A client cancelled a job no host runs (queued, or waiting to retry). */
  | { kind: 'cancel-request'; progress: number }
  /**
   * The queue lost the job; `status` is the row's unfinished status as the reconciler read it (the
   * policy's maxAttempts is the row's).
   */
  | {
      kind: 'lost'
      status: JobStatus
      progress: number
      nextAttemptAt: Date | null
      /** False for a row whose type no handler knows: it is never re-added. */
      knownType: boolean
    }

export interface Policy {
  maxAttempts: number
  /** The wait before the next attempt after a retryable failure. */
  retry: BackoffPolicy
  now?: () => number
  random?: () => number
}

/** The host's retry backoff: doubling from RETRY_BACKOFF_MS, at most an hour, half of it at random. */
export const retryBackoff = (baseMs: number): BackoffPolicy => ({ baseMs, maxMs: 3_600_000, jitter: 0.5 })

/**
 * A write of the job row, as the guard sees it:
 * - `start`: the next attempt starts (any unfinished row);
 * - `progress`: progress of attempt N (only while N runs);
 * - `finish`: attempt N ends (only if N is still the row's attempt);
 * - `cancel`: a client's cancel (any unfinished row, whatever its attempt);
 * - `lost`: the reconciler's write, only if the row still has the status and attempt it was read with;
 * - `waiting`: the message of a job put back without an attempt (queued or retrying rows only).
 * A terminal status is final for all of them.
 */
export type RowWrite =
  | { kind: 'start' }
  | { kind: 'progress'; attempt: number }
  | { kind: 'finish'; attempt: number }
  | { kind: 'cancel' }
  | { kind: 'lost'; status: JobStatus; attempt: number }
  | { kind: 'waiting' }

/**
 * Whether `write` may change a row that is now `current`. `records.ts` builds its SQL WHERE clauses from
 * the same cases (`guard()`), and a test checks that both agree on every status.
 *
 * @example mayWrite({ status: 'running', attempt: 2 }, { kind: 'finish', attempt: 1 }) // false: stale
 */
export function mayWrite(current: { status: JobStatus; attempt: number }, write: RowWrite): boolean {
  if (TERMINAL_STATUSES.includes(current.status)) return false
  switch (write.kind) {
    case 'start':
    case 'cancel':
      return true
    case 'progress':
      return current.attempt === write.attempt && current.status === 'running'
    case 'finish':
      return current.attempt === write.attempt
    case 'lost':
      return current.attempt === write.attempt && current.status === write.status
    case 'waiting':
      return current.status === 'queued' || current.status === 'retrying'
  }
}

/** What the reconciler did with a job the queue lost. */
export const RECONCILE_ACTIONS = ['requeued', 'failed'] as const
export type ReconcileAction = (typeof RECONCILE_ACTIONS)[number]

/** The metric series an outcome counts (`HostMetrics.count` turns them into increments). */
export interface Counts {
  jobsTotal?: 'completed' | 'failed' | 'cancelled' | 'retrying'
  jobErrors?: ErrorReason
  retries?: boolean
  timeouts?: boolean
  cancellations?: boolean
  duration?: { status: 'completed' | 'failed' | 'cancelled'; seconds: number }
  reconciled?: ReconcileAction
}

/** What becomes of the BullMQ job once the row is written. */
export type QueueAction =
  | { kind: 'complete' }
  | { kind: 'delay'; until: number }
  /** Straight back to the queue (another host, or this one restarted, takes it). */
  | { kind: 'wait' }
  | { kind: 'fail'; message: string }
  /** The queue lost it: add it again from the row, after `delayMs`. */
  | { kind: 'add'; delayMs: number }
  /** Nothing: no BullMQ job is involved (a client's cancel). */
  | { kind: 'none' }

export type WrittenStatus = 'completed' | 'retrying' | 'queued' | 'cancelled' | 'failed'

/** A decision: the row to write, the event to publish, what to count and what to do with the queue. */
export interface Transition {
  write: RowWrite
  status: WrittenStatus
  progress: number
  message: string
  attempt: number
  error?: JobError
  result?: unknown
  artifacts?: ArtifactEntry[]
  nextAttemptAt?: Date
  counts: Counts
  /** Files under the job's prefix that no manifest covers are removed (it ends without its output). */
  dropPartial: boolean
  /**
   * When counts and the partial-output removal happen. `before`: an attempt that ended counts and
   * cleans up whether or not its row write is refused, and first, so that whoever sees the row or the
   * event finds metrics and files final. `after`: only once the row is won (the reconciler acts on a
   * row only if no host or gateway wrote it meanwhile).
   */
  effects: 'before' | 'after'
  queue: QueueAction
  /** The event published once the row is written; terminal events end the job's replay log's life. */
  event: { status: WrittenStatus; progress: number; message: string; terminal: boolean }
}

const isTerminalStatus = (s: WrittenStatus) => TERMINAL_STATUSES.includes(s)

function transition(
  t: Omit<Transition, 'event' | 'counts' | 'dropPartial' | 'effects'> &
    Partial<Pick<Transition, 'counts' | 'dropPartial' | 'effects'>>,
): Transition {
  return {
    counts: {},
    dropPartial: false,
    effects: 'before',
    ...t,
    event: {
      status: t.status,
      progress: t.progress,
      message: t.message,
      terminal: isTerminalStatus(t.status),
    },
  }
}

const LOST_REQUEUED = 'the queue lost this job (Redis data lost); queued again'

/**
 * What an outcome of attempt `attempt` does to the job (pure: time and chance come from `policy`).
 *
 * @example decide({ kind: 'cancel-request', progress: 40 }, 2, policy).status // 'cancelled'
 */
export function decide(outcome: Outcome, attempt: number, policy: Policy): Transition {
  const finish = { kind: 'finish', attempt } as const
  switch (outcome.kind) {
    case 'completed':
      return transition({
        write: finish,
        attempt,
        status: 'completed',
        progress: 100,
        message: outcome.message || 'completed',
        result: outcome.result ?? null,
        artifacts: outcome.artifacts,
        counts: { jobsTotal: 'completed', duration: { status: 'completed', seconds: outcome.seconds } },
        queue: { kind: 'complete' },
      })
    case 'cancelled-before-start': {
      const message = 'cancelled before it started'
      return transition({
        write: finish,
        attempt,
        status: 'cancelled',
        progress: outcome.progress,
        message,
        error: new CancelledError(message).toJobError(),
        counts: { jobsTotal: 'cancelled' },
        dropPartial: true,
        queue: { kind: 'fail', message: 'cancelled' },
      })
    }
    case 'exhausted':
      return finalFailure(new AttemptsExhaustedError(policy.maxAttempts), attempt, outcome.progress, {
        counts: { jobsTotal: 'failed', jobErrors: 'crash' },
        dropPartial: true,
      })
    case 'invalid':
      return finalFailure(new InvalidJobError(outcome.message), attempt, 0, {
        counts: { jobsTotal: 'failed', jobErrors: 'invalid_params' },
      })
    case 'host-fault':
      return finalFailure(new HostFaultError(outcome.cause), attempt, outcome.progress)
    case 'cancel-request':
      return transition({
        write: { kind: 'cancel' },
        attempt,
        status: 'cancelled',
        progress: outcome.progress,
        message: 'cancelled',
        error: new CancelledError('cancelled by request').toJobError(),
        queue: { kind: 'none' },
      })
    case 'lost':
      return decideLost(outcome, attempt, policy)
    case 'failed':
      return decideFailed(outcome, attempt, policy)
  }
}

function decideFailed(
  outcome: Extract<Outcome, { kind: 'failed' }>,
  attempt: number,
  policy: Policy,
): Transition {
  const e = outcome.error
  const error = e.toJobError()
  const base = { write: { kind: 'finish', attempt } as const, attempt, progress: outcome.progress, error }
  if (e.reason === 'shutdown')
    // Not counted: the attempt did not fail, and the next one (on any host) starts at once.
    return transition({
      ...base,
      status: 'queued',
      message: 'interrupted by host shutdown; back in the queue',
      queue: { kind: 'wait' },
    })
  const cancelled = e.reason === 'cancelled'
  const counts: Counts = {
    duration: { status: cancelled ? 'cancelled' : 'failed', seconds: outcome.seconds },
    jobErrors: e.reason,
    ...(e.reason === 'timeout' ? { timeouts: true } : {}),
  }
  if (cancelled)
    return transition({
      ...base,
      status: 'cancelled',
      message: 'cancelled',
      counts: { ...counts, cancellations: true, jobsTotal: 'cancelled' },
      dropPartial: true,
      queue: { kind: 'fail', message: 'cancelled' },
    })
  if (e.retryable && attempt < policy.maxAttempts) {
    const delay = backoffDelay(attempt, policy.retry, policy.random)
    const at = (policy.now ?? Date.now)() + delay
    return transition({
      ...base,
      status: 'retrying',
      message: `attempt ${attempt} failed (${e.reason}): ${e.message}; retrying in ${(delay / 1000).toFixed(1)}s`,
      nextAttemptAt: new Date(at),
      counts: { ...counts, retries: true, jobsTotal: 'retrying' },
      queue: { kind: 'delay', until: at },
    })
  }
  return transition({
    ...base,
    status: 'failed',
    message: `failed (${e.reason}): ${e.message}`,
    counts: { ...counts, jobsTotal: 'failed' },
    dropPartial: true,
    queue: { kind: 'fail', message: `${e.reason}: ${e.message}` },
  })
}

function decideLost(
  outcome: Extract<Outcome, { kind: 'lost' }>,
  attempt: number,
  policy: Policy,
): Transition {
  const write = { kind: 'lost', status: outcome.status, attempt } as const
  // Attempts left: the next one would be attempt + 1 (a running attempt whose host is gone counts).
  if (outcome.knownType && attempt < policy.maxAttempts) {
    // A retrying job keeps waiting for its next attempt time; a running one (its host is gone) is queued.
    const retrying = outcome.status === 'retrying'
    const now = (policy.now ?? Date.now)()
    return transition({
      write,
      attempt,
      status: retrying ? 'retrying' : 'queued',
      progress: outcome.progress,
      message: LOST_REQUEUED,
      counts: { reconciled: 'requeued' },
      effects: 'after',
      queue: {
        kind: 'add',
        delayMs: retrying ? Math.max(0, (outcome.nextAttemptAt?.getTime() ?? 0) - now) : 0,
      },
    })
  }
  return finalFailure(new LostJobError(attempt, policy.maxAttempts), attempt, outcome.progress, {
    write,
    counts: { reconciled: 'failed', jobErrors: 'lost' },
    dropPartial: true,
    effects: 'after',
    // Its BullMQ job is gone already.
    queue: { kind: 'none' },
  })
}

/** Failed for good with `error`, whose message is the row's, the event's and BullMQ's. */
function finalFailure(
  error: JobFailure,
  attempt: number,
  progress: number,
  more: Partial<Pick<Transition, 'write' | 'counts' | 'dropPartial' | 'effects' | 'queue'>> = {},
): Transition {
  return transition({
    write: { kind: 'finish', attempt },
    attempt,
    status: 'failed',
    progress,
    message: error.message,
    error: error.toJobError(),
    queue: { kind: 'fail', message: error.message },
    ...more,
  })
}

/**
 * The BullMQ action once the row write is known: a retry whose row was not written (the job was
 * cancelled meanwhile), or whose job was cancelled while the attempt was failing, gets no further
 * attempt and leaves no partial output.
 */
export function settle(
  t: Transition,
  after: { wrote: boolean; cancelRequested: boolean },
): { queue: QueueAction; dropPartial: boolean } {
  if (t.status === 'retrying' && (!after.wrote || after.cancelRequested))
    return { queue: { kind: 'fail', message: 'cancelled' }, dropPartial: true }
  return { queue: t.queue, dropPartial: false }
}
