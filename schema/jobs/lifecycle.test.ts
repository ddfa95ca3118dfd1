/** The lifecycle's rules alone: no Redis, no Postgres, no child process (the ports are in-memory fakes). */
import { describe, expect, it } from 'vitest'
import { JOB_STATUSES, type JobStatus } from '../common.ts'
import type { ProgressEvent } from '../events.ts'
import { apply } from './apply.ts'
import { AttemptError, CancelledError, JobFailure, NotQueuedError, StorageError } from './errors.ts'
import {
  decide,
  mayWrite,
  type Outcome,
  type Policy,
  type RowWrite,
  retryBackoff,
  settle,
} from './lifecycle.ts'

const NOW = Date.parse('2026-01-01T00:00:00.000Z')
const policy: Policy = { maxAttempts: 3, retry: retryBackoff(1000), now: () => NOW, random: () => 0 }
const failed = (error: JobFailure, progress = 40): Outcome => ({
  kind: 'failed',
  error,
  progress,
  seconds: 2,
})
const processFailure = (reason: JobFailure['reason'], retryable = true, message = `job ${reason}`) =>
  new AttemptError({
    name: 'AbortError',
    message,
    code: reason.toUpperCase(),
    reason,
    retryable,
    exitCode: null,
    signal: null,
    stderrTail: '',
  })

describe('decide', () => {
  it('completed: result and artifacts, 100%, the last message, counted with its duration', () => {
    const artifacts = [{ path: 'a', key: 'loras/j/a', size: 1, sha256: 'x', contentType: 'text/plain' }]
    const t = decide({ kind: 'completed', result: undefined, artifacts, message: '', seconds: 3 }, 1, policy)
    expect(t).toMatchObject({
      write: { kind: 'finish', attempt: 1 },
      status: 'completed',
      progress: 100,
      message: 'completed',
      result: null,
      artifacts,
      dropPartial: false,
      effects: 'before',
      counts: { jobsTotal: 'completed', duration: { status: 'completed', seconds: 3 } },
      queue: { kind: 'complete' },
      event: { status: 'completed', progress: 100, message: 'completed', terminal: true },
    })
    expect(
      decide({ kind: 'completed', result: 1, artifacts: [], message: 'Epoch 2/2', seconds: 1 }, 1, policy),
    ).toMatchObject({ message: 'Epoch 2/2', result: 1 })
  })

  it('a retryable failure with attempts left: retrying at now + backoff, with the reason in the message', () => {
    const t = decide(failed(processFailure('crash', true, 'job process exited with code 3')), 2, policy)
    expect(t).toMatchObject({
      status: 'retrying',
      progress: 40,
      message: 'attempt 2 failed (crash): job process exited with code 3; retrying in 2.0s',
      error: { code: 'CRASH', reason: 'crash', message: 'job process exited with code 3' },
      nextAttemptAt: new Date(NOW + 2000),
      counts: {
        jobsTotal: 'retrying',
        retries: true,
        jobErrors: 'crash',
        duration: { status: 'failed', seconds: 2 },
      },
      dropPartial: false,
      queue: { kind: 'delay', until: NOW + 2000 },
      event: { status: 'retrying', terminal: false },
    })
  })

  it('the backoff doubles, is capped at an hour and draws up to half of it at random', () => {
    const delay = (attempt: number, random: number) =>
      (decide(failed(new StorageError('S3 unavailable: x')), attempt, {
        ...policy,
        maxAttempts: 100,
        random: () => random,
      }).nextAttemptAt?.getTime() ?? 0) - NOW
    expect([1, 2, 3].map((a) => delay(a, 0))).toEqual([1000, 2000, 4000])
    expect(delay(30, 0)).toBe(3_600_000)
    expect(delay(1, 1)).toBe(500)
  })

  it('a timeout is counted as one; the last attempt fails for good and drops partial output', () => {
    const t = decide(failed(processFailure('timeout', true, 'job timed out after 5s')), 3, policy)
    expect(t).toMatchObject({
      status: 'failed',
      message: 'failed (timeout): job timed out after 5s',
      error: { code: 'TIMEOUT', reason: 'timeout' },
      counts: { jobsTotal: 'failed', timeouts: true, jobErrors: 'timeout' },
      dropPartial: true,
      queue: { kind: 'fail', message: 'timeout: job timed out after 5s' },
      event: { status: 'failed', terminal: true },
    })
  })

  it('a non-retryable failure fails at once, whatever attempts are left', () => {
    const t = decide(failed(new JobFailure('invalid_dataset', 'no images', { retryable: false })), 1, policy)
    expect(t).toMatchObject({ status: 'failed', message: 'failed (invalid_dataset): no images' })
    expect(t.error).toEqual({ code: 'INVALID_DATASET', reason: 'invalid_dataset', message: 'no images' })
  })

  it('cancelled while running: cancelled, counted, partial output dropped, never retried', () => {
    const t = decide(failed(processFailure('cancelled', false, 'job cancelled'), 55), 1, policy)
    expect(t).toMatchObject({
      status: 'cancelled',
      progress: 55,
      message: 'cancelled',
      error: { code: 'CANCELLED', reason: 'cancelled', message: 'job cancelled' },
      counts: {
        jobsTotal: 'cancelled',
        cancellations: true,
        jobErrors: 'cancelled',
        duration: { status: 'cancelled', seconds: 2 },
      },
      dropPartial: true,
      queue: { kind: 'fail', message: 'cancelled' },
      event: { terminal: true },
    })
  })

  it('shutdown: back to the queue at once, not counted, output kept', () => {
    const t = decide(failed(processFailure('shutdown', true, 'job interrupted by host shutdown')), 1, policy)
    expect(t).toMatchObject({
      status: 'queued',
      message: 'interrupted by host shutdown; back in the queue',
      error: { reason: 'shutdown' },
      counts: {},
      dropPartial: false,
      queue: { kind: 'wait' },
      event: { status: 'queued', terminal: false },
    })
  })

  it('cancelled before it started', () => {
    expect(decide({ kind: 'cancelled-before-start', progress: 12 }, 2, policy)).toMatchObject({
      write: { kind: 'finish', attempt: 2 },
      status: 'cancelled',
      progress: 12,
      message: 'cancelled before it started',
      error: { code: 'CANCELLED', reason: 'cancelled', message: 'cancelled before it started' },
      counts: { jobsTotal: 'cancelled' },
      dropPartial: true,
      queue: { kind: 'fail', message: 'cancelled' },
    })
  })

  it('attempts exhausted (host failures): failed as a crash', () => {
    const message = 'gave up after 3 attempts (the last ones were interrupted by host failures)'
    expect(decide({ kind: 'exhausted', progress: 5 }, 4, policy)).toMatchObject({
      status: 'failed',
      message,
      error: { code: 'CRASH', reason: 'crash', message },
      counts: { jobsTotal: 'failed', jobErrors: 'crash' },
      dropPartial: true,
      queue: { kind: 'fail', message },
    })
  })

  it('an invalid envelope: failed at once with invalid_params, nothing to drop', () => {
    const message = 'invalid job payload: params.epochs: expected a number'
    expect(decide({ kind: 'invalid', message }, 1, policy)).toMatchObject({
      status: 'failed',
      progress: 0,
      message,
      error: { code: 'INVALID_PARAMS', reason: 'invalid_params', message },
      counts: { jobsTotal: 'failed', jobErrors: 'invalid_params' },
      dropPartial: false,
      queue: { kind: 'fail', message },
      event: { terminal: true },
    })
  })

  it("a host's own fault ends the attempt as a crash", () => {
    const t = decide({ kind: 'host-fault', cause: new Error('disk full'), progress: 30 }, 1, policy)
    expect(t).toMatchObject({
      status: 'failed',
      progress: 30,
      message: 'host error: disk full',
      error: { code: 'CRASH', reason: 'crash', message: 'host error: disk full' },
      queue: { kind: 'fail', message: 'host error: disk full' },
    })
  })

  it('a cancel by request: any attempt of an unfinished row, the typed error, a terminal event', () => {
    expect(decide({ kind: 'cancel-request', progress: 20 }, 1, policy)).toMatchObject({
      write: { kind: 'cancel' },
      status: 'cancelled',
      progress: 20,
      message: 'cancelled',
      error: new CancelledError('cancelled by request').toJobError(),
      counts: {},
      queue: { kind: 'none' },
      event: { status: 'cancelled', terminal: true },
    })
  })

  it('lost with attempts left: queued again (a retrying job keeps its time), effects once the row is won', () => {
    const lost = (status: JobStatus, nextAttemptAt: Date | null = null): Outcome => ({
      kind: 'lost',
      status,
      progress: 10,
      nextAttemptAt,
      knownType: true,
    })
    const message = 'the queue lost this job (Redis data lost); queued again'
    expect(decide(lost('running'), 1, policy)).toMatchObject({
      write: { kind: 'lost', status: 'running', attempt: 1 },
      status: 'queued',
      message,
      counts: { reconciled: 'requeued' },
      effects: 'after',
      queue: { kind: 'add', delayMs: 0 },
      event: { status: 'queued', progress: 10, terminal: false },
    })
    expect(decide(lost('retrying', new Date(NOW + 5000)), 1, policy)).toMatchObject({
      status: 'retrying',
      queue: { kind: 'add', delayMs: 5000 },
    })
    expect(decide(lost('retrying', new Date(NOW - 5000)), 1, policy).queue).toEqual({
      kind: 'add',
      delayMs: 0,
    })
  })

  it('lost without attempts left, or of an unknown type: failed with reason lost', () => {
    const message = 'the queue lost this job (Redis data lost) and it has no attempt left (3/3)'
    const outcome: Outcome = {
      kind: 'lost',
      status: 'running',
      progress: 10,
      nextAttemptAt: null,
      knownType: true,
    }
    expect(decide(outcome, 3, policy)).toMatchObject({
      status: 'failed',
      message,
      error: { code: 'LOST', reason: 'lost', message },
      counts: { reconciled: 'failed', jobErrors: 'lost' },
      dropPartial: true,
      effects: 'after',
      queue: { kind: 'none' },
      event: { status: 'failed', terminal: true },
    })
    expect(decide({ ...outcome, knownType: false }, 0, policy).status).toBe('failed')
  })
})

describe('settle', () => {
  const retry = decide(failed(processFailure('crash')), 1, policy)
  it('a retry goes to the delayed set only if its row was written and no cancel came meanwhile', () => {
    expect(settle(retry, { wrote: true, cancelRequested: false })).toEqual({
      queue: { kind: 'delay', until: NOW + 1000 },
      dropPartial: false,
    })
    for (const after of [
      { wrote: false, cancelRequested: false },
      { wrote: true, cancelRequested: true },
    ])
      expect(settle(retry, after)).toEqual({
        queue: { kind: 'fail', message: 'cancelled' },
        dropPartial: true,
      })
  })
  it('any other transition keeps its action, written or not', () => {
    const done = decide({ kind: 'completed', result: 1, artifacts: [], message: 'x', seconds: 1 }, 1, policy)
    expect(settle(done, { wrote: false, cancelRequested: true }).queue).toEqual({ kind: 'complete' })
  })
})

describe('mayWrite', () => {
  const writes: RowWrite[] = [
    { kind: 'start' },
    { kind: 'progress', attempt: 2 },
    { kind: 'finish', attempt: 2 },
    { kind: 'cancel' },
    { kind: 'lost', status: 'running', attempt: 2 },
    { kind: 'waiting' },
  ]
  it('a terminal status is final for every write', () => {
    for (const status of ['completed', 'failed', 'cancelled'] as const)
      for (const write of writes) expect(mayWrite({ status, attempt: 2 }, write)).toBe(false)
  })
  it("a stale attempt's write is refused", () => {
    const current = { status: 'running' as const, attempt: 3 }
    expect(mayWrite(current, { kind: 'finish', attempt: 2 })).toBe(false)
    expect(mayWrite(current, { kind: 'progress', attempt: 2 })).toBe(false)
    expect(mayWrite(current, { kind: 'lost', status: 'running', attempt: 2 })).toBe(false)
    expect(mayWrite(current, { kind: 'finish', attempt: 3 })).toBe(true)
    expect(mayWrite(current, { kind: 'progress', attempt: 3 })).toBe(true)
  })
  it('per write: who may change an unfinished row', () => {
    const allowed = (write: RowWrite) =>
      JOB_STATUSES.filter((status) => mayWrite({ status, attempt: 2 }, write))
    expect(allowed({ kind: 'start' })).toEqual(['queued', 'running', 'retrying'])
    expect(allowed({ kind: 'cancel' })).toEqual(['queued', 'running', 'retrying'])
    expect(allowed({ kind: 'finish', attempt: 2 })).toEqual(['queued', 'running', 'retrying'])
    expect(allowed({ kind: 'progress', attempt: 2 })).toEqual(['running'])
    expect(allowed({ kind: 'lost', status: 'retrying', attempt: 2 })).toEqual(['retrying'])
    expect(allowed({ kind: 'waiting' })).toEqual(['queued', 'retrying'])
  })
})

describe('apply', () => {
  const job = { jobId: 'j1', type: 'train_lora' as const }
  const fakes = (wrote: boolean) => {
    const log: string[] = []
    const ports = {
      write: async () => {
        log.push('row')
        return wrote
      },
      emit: async (e: Omit<ProgressEvent, 'seq'>, terminal: boolean): Promise<ProgressEvent> => {
        log.push(`event:${e.status}:${terminal}`)
        return { ...e, seq: 7 }
      },
      record: async (e: ProgressEvent) => {
        log.push(`history:${e.seq}`)
      },
      count: () => log.push('count'),
      dropPartial: async () => {
        log.push('drop')
      },
      now: () => NOW,
    }
    return { log, ports }
  }

  it('row, then event, then history; counts and partial output first for an ended attempt', async () => {
    const { log, ports } = fakes(true)
    const t = decide(failed(processFailure('cancelled', false)), 1, policy)
    expect(await apply(job, t, ports)).toBe(true)
    expect(log).toEqual(['count', 'drop', 'row', 'event:cancelled:true', 'history:7'])
  })

  it('the event carries the row: status, progress, message, attempt', async () => {
    const events: Omit<ProgressEvent, 'seq'>[] = []
    const { ports } = fakes(true)
    const t = decide({ kind: 'cancel-request', progress: 20 }, 4, policy)
    await apply(job, t, {
      ...ports,
      emit: async (e, terminal) => {
        events.push(e)
        return ports.emit(e, terminal)
      },
    })
    expect(events).toEqual([
      {
        jobId: 'j1',
        type: 'train_lora',
        status: 'cancelled',
        progress: 20,
        message: 'cancelled',
        attempt: 4,
        timestamp: new Date(NOW).toISOString(),
      },
    ])
  })

  it('nothing is published when the row write is refused', async () => {
    const { log, ports } = fakes(false)
    expect(await apply(job, decide({ kind: 'cancel-request', progress: 0 }, 1, policy), ports)).toBe(false)
    expect(log).toEqual(['count', 'row'])
  })

  it("the reconciler's effects wait for the row: none at all when it is refused", async () => {
    const outcome: Outcome = {
      kind: 'lost',
      status: 'running',
      progress: 0,
      nextAttemptAt: null,
      knownType: true,
    }
    const lost = decide(outcome, 3, policy)
    const refused = fakes(false)
    expect(await apply(job, lost, refused.ports)).toBe(false)
    expect(refused.log).toEqual(['row'])
    const won = fakes(true)
    expect(await apply(job, lost, won.ports)).toBe(true)
    expect(won.log).toEqual(['row', 'count', 'drop', 'event:failed:true', 'history:7'])
  })
})

describe('the error vocabulary', () => {
  it('classes with a reason, a code, retryable and the stored form', () => {
    const storage = new StorageError('S3 unavailable: down', new Error('down'))
    expect(storage).toBeInstanceOf(JobFailure)
    expect(storage).toMatchObject({
      name: 'StorageError',
      reason: 'storage',
      code: 'STORAGE',
      retryable: true,
    })
    expect(storage.cause).toBeInstanceOf(Error)
    expect(new NotQueuedError().toJobError()).toEqual({
      code: 'NOT_QUEUED',
      reason: 'cancelled',
      message: 'not queued: Redis was unavailable during the submit',
    })
    expect(processFailure('crash')).toMatchObject({ name: 'AbortError', exitCode: null, stderrTail: '' })
  })
})
