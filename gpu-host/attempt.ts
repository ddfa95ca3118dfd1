/**
 * One attempt of one job on this host: wait for an engine and for a device with room for the job's VRAM
 * (without an attempt), start the attempt, run the job's process on that device, write the manifest, then decide and apply the outcome
 * (schema/jobs: row, then event, then history) and tell BullMQ what became of the job.
 */
import { mkdir, rm } from 'node:fs/promises'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import type { S3Client } from '@aws-sdk/client-s3'
import { DelayedError, type Job, UnrecoverableError, WaitingError } from 'bullmq'
import type { Redis } from 'ioredis'
import type { Logger } from 'pino'
import type { AnyHandler } from '../functions/sdk/define.ts'
import type { Config } from '../schema/config.ts'
import { ENGINE_SETUP, type Engine, isEngineOf } from '../schema/engines.ts'
import type { JobEnvelope } from '../schema/envelope.ts'
import { type HostEntry, readHosts } from '../schema/hosts.ts'
import { apply } from '../schema/jobs/apply.ts'
import { AttemptError, StorageError } from '../schema/jobs/errors.ts'
import {
  decide,
  type Outcome,
  type Policy,
  retryBackoff,
  settle,
  type Transition,
} from '../schema/jobs/lifecycle.ts'
import { eventPorts } from '../schema/jobs/requests.ts'
import { cancelKey } from '../schema/keys.ts'
import type { JobType } from '../schema/params/index.ts'
import { handlerModuleFile } from './child-spawn.ts'
import { engineWaitDelay } from './engines.ts'
import type { Slot } from './gpus.ts'
import { AttemptLog } from './job-logs.ts'
import type { HostMetrics } from './metrics.ts'
import { S3ModelFetcher } from './model-fetch.ts'
import { groupMembers } from './process-group.ts'
import { progressMilestones, Reporter } from './reporter.ts'
import { JobProcess } from './runner.ts'
import { invalidateManifest, publishManifest, removeUncovered, S3ArtifactStore } from './s3-artifacts.ts'
import type { SlotPool } from './slots.ts'
import type { JobState } from './state.ts'
import type { GpuRequest } from './vram-ledger.ts'

/** How long a job that does not fit while another waits for room stays in the queue before it is taken again. */
const VRAM_RETRY_MS = 5_000
/**
 * A job handed over to another host (putBack) is due this soon, and the host that put it back keeps its
 * worker slot this much longer, so the other host's worker, woken by the job's marker, takes it.
 */
const HANDOVER_MS = 100
const HANDOVER_HOLD_MS = 150

/** Whether a host's beat shows a slot a job of `vramMb` could start on now (an idle one, or one with room). */
const hasRoomFor = (host: HostEntry, vramMb: number): boolean =>
  host.slots.list.some((s) => !s.busy || (s.memoryFreeMb ?? -1) >= vramMb)

/** A job this host has taken, from its BullMQ processor call to its end. */
export interface RunningJob {
  jobId: string
  type: JobType
  cancelRequested: boolean
  proc: JobProcess | undefined
  reporter: Reporter | undefined
  /** The attempt's log (stdout, stderr, ctx.log), closed before its final event. */
  logs?: AttemptLog
  /** Set once the attempt is recorded as started, with when (ms). */
  attempt?: number
  startedAt?: number
  /**
   * The attempts the job may make, as of this one: its maxAttempts, plus the attempts a host's shutdown
   * interrupted (those are not counted). Set with `attempt`.
   */
  budget?: number
  /** The slot its process runs on (for the heartbeat), and the GPU memory its handler needs. */
  slot?: number
  vramMb?: number
}

export interface AttemptPlan {
  handler: AnyHandler
  maxAttempts: number
  timeoutSec: number
  outputPrefix: string
  envelope: JobEnvelope
  /** What the job needs of a GPU: its own `gpu` over its handler's. */
  gpu: GpuRequest
}

export interface AttemptDeps {
  config: Config
  logger: Logger
  s3: { client: S3Client }
  redis: Redis
  state: JobState
  metrics: HostMetrics
  slots: SlotPool
  gpuChecks: () => boolean
  closing: () => boolean
  hasEngine: (type: JobType, engine: Engine) => boolean
  engineWait?: { baseMs: number; maxMs: number } | undefined
  handlerModules?: Partial<Record<JobType, string>> | undefined
}

/**
 * A job's last service-log line: "job failed (timeout): job timed out after 3s", "job cancelled", not the
 * status twice ("job failed: failed (timeout): ...") when the job's message starts with it.
 */
export function endLine(status: 'failed' | 'cancelled', message: string): string {
  if (message === status) return `job ${status}`
  return message.startsWith(`${status} `) ? `job ${message}` : `job ${status}: ${message}`
}

export class AttemptRunner {
  constructor(private readonly deps: AttemptDeps) {}

  /** The host-named handler module of `type`, as the job process imports it (its compiled copy). */
  private handlerModule(type: JobType): string | undefined {
    const file = this.deps.handlerModules?.[type]
    return file === undefined ? undefined : handlerModuleFile(file)
  }

  private policy(maxAttempts: number): Policy {
    return { maxAttempts, retry: retryBackoff(this.deps.config.retryBackoffMs) }
  }

  /** Runs one attempt of `job`; resolves with its result, or throws BullMQ's error for what became of it. */
  async run(job: Job, token: string | undefined, entry: RunningJob, plan: AttemptPlan): Promise<unknown> {
    const { config, logger, redis, state, metrics, slots } = this.deps
    const { jobId, type } = entry
    const log = logger.child({ jobId, type })

    if ((await redis.exists(cancelKey(jobId))) === 1) entry.cancelRequested = true
    // Never run a job on an engine this host lacks (a cancelled one goes on, to end as cancelled). An
    // engine the type does not have is left to the params check, which fails the job naming it.
    const engine = plan.envelope.params.engine
    if (!entry.cancelRequested && isEngineOf(type, engine) && !this.deps.hasEngine(type, engine))
      await this.waitForEngine(job, token, entry, engine, plan.gpu.vramMb)
    // Admission by VRAM (slots.ts): a device with room for the job's `gpu` is reserved for it before its
    // attempt starts, so waiting for one never costs an attempt. A cancelled job needs no device.
    let slot: Slot | undefined
    if (!entry.cancelRequested) {
      const placed = await slots.admit(jobId, plan.gpu, () => entry.cancelRequested || this.deps.closing())
      if ('never' in placed)
        return this.putBack(
          job,
          token,
          entry,
          `waiting for a GPU host with a GPU of ${plan.gpu.vramMb} MiB or more (this host's largest: ${placed.largestMb} MiB)`,
          { needMb: plan.gpu.vramMb },
          (host) => hasRoomFor(host, plan.gpu.vramMb),
        )
      if ('busy' in placed) {
        log.info({ needMb: plan.gpu.vramMb }, 'no GPU has room and another job waits first; put back')
        await job.moveToDelayed(Date.now() + VRAM_RETRY_MS, token)
        // Back as soon as room may have come (slots.ts calls back): the delay is a bound, not a wait. A job
        // another host took, or that was cancelled meanwhile, is no longer delayed: nothing to promote.
        slots.whenRoom(() => void job.promote().catch(() => {}))
        throw new DelayedError()
      }
      if ('stopped' in placed && !entry.cancelRequested) {
        log.info('shutting down while waiting for GPU memory; requeued')
        await job.moveToWait(token)
        throw new WaitingError()
      }
      if ('slot' in placed) slot = placed.slot
    }
    // Until the attempt's process is running, the reservation is this function's to give back.
    let handedOver = false
    try {
      const row = await state.startAttempt(jobId)
      if (!row) {
        log.info('job is already finished (cancelled before it started); skipping')
        return { skipped: true }
      }
      const attempt = row.attempt
      // Attempt numbers go on across shutdowns (each has its own row, log and events), so the budget grows
      // by the ones a shutdown interrupted; asked only once the number is past maxAttempts.
      const interrupted = attempt > plan.maxAttempts ? await state.shutdownInterruptions(jobId) : 0
      const budget = plan.maxAttempts + interrupted
      entry.attempt = attempt
      entry.budget = budget
      entry.startedAt = Date.now()
      const reporter = new Reporter(redis, state, job, { jobId, type, attempt }, (msg, err) =>
        log.warn({ err }, msg),
      )
      entry.reporter = reporter
      entry.logs = new AttemptLog(redis, state, { jobId, attempt }, (msg, err) => log.warn({ err }, msg))
      const end = (outcome: Outcome) =>
        this.end(job, token, entry, outcome, decide(outcome, attempt, this.policy(budget)), plan, log)

      if (entry.cancelRequested || !slot)
        return end({ kind: 'cancelled-before-start', progress: row.progress })
      if (attempt > budget) return end({ kind: 'exhausted', progress: row.progress })

      metrics.attempts.inc({ type })
      metrics.queueWait.observe(
        { type },
        Math.max(0, (Date.now() - (job.timestamp + (job.delay ?? 0))) / 1000),
      )
      // The running event is published while the job's process is handed its job: the reporter keeps the
      // attempt's events in order, so the handler's first progress still comes after it.
      const announced = reporter
        .emit('running', 0, `attempt ${attempt}/${budget} started on ${config.hostId}`)
        .then((event) => state.recordEvent(event))
        .catch((err: unknown) => log.warn({ err }, 'could not record the running event'))
      reporter.progress = 0
      handedOver = true
      const outcome = await this.execute(entry, reporter, slot, plan, log)
      await announced
      return end(outcome)
    } finally {
      if (slot && !handedOver) slots.release(jobId, slot)
    }
  }

  /** The attempt's process on `slot`, then its manifest: the outcome, never thrown. */
  private async execute(
    entry: RunningJob,
    reporter: Reporter,
    slot: Slot,
    plan: AttemptPlan,
    log: Logger,
  ): Promise<Outcome> {
    const { config, s3, metrics, slots, state } = this.deps
    const { jobId, type } = entry
    const attempt = entry.attempt ?? 0
    entry.slot = slot.id
    const startedAt = performance.now()
    const seconds = () => (performance.now() - startedAt) / 1000
    const failed = (error: StorageError | AttemptError, took = seconds()): Outcome => ({
      kind: 'failed',
      error,
      progress: reporter.progress,
      seconds: took,
    })
    const scratch = path.join(config.dataDir, 'scratch', `${jobId}-${attempt}`)
    const milestones = progressMilestones((pct, msg) =>
      log.info({ attempt, progress: pct }, `${pct}%: ${msg}`),
    )
    let run: Awaited<JobProcess['done']>
    // The last attempt's manifest goes while the process starts: its first file waits for that (the
    // store's `before`), and if S3 cannot do it the attempt ends as a storage failure, its process
    // stopped rather than left to run for nothing.
    let storageDown: unknown
    let proc: JobProcess | undefined
    const invalidated = invalidateManifest(s3.client, config.s3.bucket, plan.outputPrefix)
    invalidated.catch((err: unknown) => {
      storageDown = err
      proc?.abort('cancelled')
    })
    try {
      await mkdir(scratch, { recursive: true })
      proc = new JobProcess(
        {
          job: { jobId, type, params: plan.envelope.params, attempt },
          gpu: { ...slot.gpu, vramReservedMb: plan.gpu.vramMb },
          cudaVisibleDevices: slot.cudaVisibleDevices,
          paths: { scratch, models: config.modelsDir, data: config.dataDir },
          engines: config.engines,
          artifacts: new S3ArtifactStore(s3.client, config.s3.bucket, plan.outputPrefix, invalidated),
          models: new S3ModelFetcher(s3.client, config.s3.bucket, config.modelsDir),
          onModelCache: (model, outcome, bytes) => metrics.modelCache(model, outcome, bytes),
          timeoutMs: plan.timeoutSec * 1000,
          killGraceMs: config.killGraceSec * 1000,
          handlerModule: this.handlerModule(type),
          onProgress: (pct, msg, metrics) => {
            reporter.report(pct, msg, metrics)
            milestones.reached(pct, reporter.message)
          },
          // What the job printed is kept with the job (its logs, onLine): the service log carries it at
          // debug, but for a handler's own warnings and errors, so it says what happened to jobs and is not
          // drowned by an engine's output (kohya prints hundreds of lines, at "warn" on stderr).
          onLog: (level, msg, fields) =>
            log[fields?.stream === undefined && (level === 'warn' || level === 'error') ? level : 'debug'](
              { ...fields, attempt },
              msg,
            ),
          onLine: (stream, text, level, fields) => entry.logs?.add(stream, text, level, fields),
          onStarted: (ms) => metrics.subprocessStart.observe(ms / 1000),
        },
        slots.takeSpare(slot),
      )
      entry.proc = proc
      slots.setGroup(jobId, proc.pid)
      log.info(
        { attempt, slot: slot.id, gpu: slot.cudaVisibleDevices, vramMb: plan.gpu.vramMb, pid: proc.pid },
        `attempt ${attempt}/${entry.budget ?? plan.maxAttempts} started on ${config.hostId} (slot ${slot.id})`,
      )
      void state.setAttemptPid(jobId, attempt, proc.pid).catch(() => {})
      // A cancel that arrived while the process was starting.
      if (entry.cancelRequested || storageDown !== undefined) proc.abort('cancelled')
      else if (this.deps.closing()) proc.abort('shutdown')
      run = await proc.done
      const left = await groupMembers(proc.pid)
      await slots.checkGpuRelease(slot, [proc.pid, ...(left ?? [])])
      if (!run.groupGone) log.error({ pid: proc.pid, left }, 'process group still has members after SIGKILL')
    } finally {
      // Here the job's process group is gone (or survived SIGKILL, logged above: its memory then shows
      // in the next reading as another process's, so the room is not handed out twice).
      slots.release(jobId, slot)
      await rm(scratch, { recursive: true, force: true }).catch(() => {})
    }
    // Never before the old manifest is gone: its removal must not remove this attempt's.
    await invalidated.catch(() => {})
    const took = seconds()
    if (storageDown !== undefined)
      return failed(new StorageError(`S3 unavailable: ${(storageDown as Error).message}`, storageDown), took)
    if (!run.ok) return failed(new AttemptError(run.error), took)
    try {
      await publishManifest(s3.client, config.s3.bucket, plan.outputPrefix, {
        jobId,
        type,
        attempt,
        createdAt: new Date().toISOString(),
        files: run.artifacts,
      })
    } catch (err) {
      return failed(new StorageError(`could not write the manifest: ${(err as Error).message}`, err), took)
    }
    return {
      kind: 'completed',
      result: run.result,
      artifacts: run.artifacts,
      message: reporter.message,
      seconds: took,
    }
  }

  /** Applies the decision, then does with the BullMQ job what it says. */
  private async end(
    job: Job,
    token: string | undefined,
    entry: RunningJob,
    outcome: Outcome,
    t: Transition,
    plan: AttemptPlan,
    log: Logger,
  ): Promise<unknown> {
    const wrote = await this.apply(entry, t, plan.outputPrefix, log)
    const { queue, dropPartial } = settle(t, { wrote, cancelRequested: entry.cancelRequested })
    if (dropPartial) await this.dropPartialOutput(plan.outputPrefix, log)
    const attempt = t.attempt
    const failure = outcome.kind === 'failed' ? outcome.error : undefined
    // Left out of the line when there is none (pino drops undefined fields).
    const stderr = (failure instanceof AttemptError && failure.stderrTail) || undefined
    switch (queue.kind) {
      case 'complete':
        log.info(
          {
            attempt,
            seconds: outcome.kind === 'completed' ? outcome.seconds.toFixed(2) : undefined,
            artifacts: t.artifacts?.length,
          },
          `job completed: ${t.message}`,
        )
        return outcome.kind === 'completed' ? outcome.result : undefined
      case 'wait':
        log.warn({ attempt }, 'job interrupted by shutdown; requeued')
        await job.moveToWait(token)
        throw new WaitingError()
      case 'delay':
        log.warn(
          { attempt, reason: failure?.reason, delay: queue.until - Date.now(), stderr },
          t.message, // "attempt 1 failed (timeout): ...; retrying in 3.1s"
        )
        await job.moveToDelayed(queue.until, token)
        throw new DelayedError()
      default:
        if (t.status === 'cancelled') log.info({ attempt }, endLine('cancelled', t.message))
        else if (failure)
          log.warn(
            { attempt, reason: failure.reason, stderr: stderr && `\n${stderr}` },
            endLine('failed', t.message),
          )
        throw new UnrecoverableError(queue.kind === 'fail' ? queue.message : t.message)
    }
  }

  /** Row (after the reporter's queued progress), then event in the attempt's seq order, then history. */
  private apply(entry: RunningJob, t: Transition, outputPrefix: string, log: Logger): Promise<boolean> {
    const { state, metrics } = this.deps
    const { jobId, type, reporter } = entry
    // Set with the attempt: every transition of this runner is of a started attempt.
    if (!reporter) throw new Error(`job ${jobId}: no attempt started`)
    return apply({ jobId, type }, t, {
      count: (counts) => metrics.count(type, counts),
      dropPartial: () => this.dropPartialOutput(outputPrefix, log),
      write: async (w) => {
        await reporter.flush()
        await entry.logs?.close()
        return state.finishAttempt(jobId, w.attempt, w)
      },
      emit: (event, terminal) => reporter.publish(event, terminal),
      record: (event) => state.recordEvent(event),
    })
  }

  /**
   * A fault of the host itself (not of the job) during an attempt: the attempt ends failed (crash), so
   * the row does not stay running. Returns the message for BullMQ.
   */
  async endOnHostFault(
    entry: RunningJob,
    err: unknown,
    plan: Pick<AttemptPlan, 'maxAttempts' | 'outputPrefix'>,
  ): Promise<string> {
    const progress = entry.reporter?.progress ?? 0
    const t = decide(
      { kind: 'host-fault', cause: err, progress },
      entry.attempt ?? 0,
      this.policy(entry.budget ?? plan.maxAttempts),
    )
    const log = this.deps.logger.child({ jobId: entry.jobId, type: entry.type })
    log.error({ err }, t.message)
    if (entry.attempt !== undefined) await this.apply(entry, t, plan.outputPrefix, log).catch(() => false)
    return t.message
  }

  /** Puts back a job for an engine this host lacks (see `putBack`). */
  private waitForEngine(
    job: Job,
    token: string | undefined,
    entry: RunningJob,
    engine: Engine,
    vramMb: number,
  ) {
    return this.putBack(
      job,
      token,
      entry,
      `waiting for a GPU host with engine ${engine}: ${ENGINE_SETUP[engine]} on one`,
      { engine },
      (host) => (host.engines[entry.type] as readonly string[]).includes(engine) && hasRoomFor(host, vramMb),
    )
  }

  /**
   * Another host, up by its heartbeat, that `canTake` the job now; undefined when there is none (or the
   * heartbeats cannot be read: the job then waits as if there were none).
   */
  private async takerOf(canTake: (host: HostEntry) => boolean): Promise<HostEntry | undefined> {
    const { redis, config, logger } = this.deps
    try {
      const hosts = await readHosts(redis, config.queuePrefix, Date.now())
      return hosts.find((h) => h.hostId !== config.hostId && h.status === 'up' && canTake(h))
    } catch (err) {
      logger.warn({ err: (err as Error).message }, 'could not read the hosts to hand a job over')
      return undefined
    }
  }

  /**
   * Puts back a job this host can never run (an engine it lacks, a GPU too small), without an attempt,
   * for another host to take: delayed (never spinning), its row still waiting with `message`, which says
   * what it needs. When no host has it the job waits so, re-checked less and less often, until one
   * starts or the job is cancelled. When another host that `canTake` it is up, with room, it is handed
   * over: due at once, while this host keeps out of the way (HANDOVER_MS).
   */
  private async putBack(
    job: Job,
    token: string | undefined,
    entry: RunningJob,
    message: string,
    fields: Record<string, unknown>,
    canTake: (host: HostEntry) => boolean,
  ): Promise<never> {
    const { jobId, type } = entry
    const { logger, state } = this.deps
    const taker = await this.takerOf(canTake)
    const delay = taker
      ? HANDOVER_MS
      : engineWaitDelay(Date.now() - job.timestamp, this.deps.engineWait ?? { baseMs: 5_000, maxMs: 60_000 })
    // The message and its event once, not at every re-check; best effort, since putting the job back is
    // what must happen (a store that fails here must not fail the job).
    try {
      const row = await state.noteWaiting(jobId, message)
      if (row) {
        logger.info({ jobId, type, ...fields }, message)
        const { emit, record } = eventPorts({ redis: this.deps.redis, records: state })
        await record(
          await emit(
            {
              jobId,
              type,
              status: row.status,
              progress: row.progress,
              message,
              attempt: row.attempt,
              timestamp: new Date().toISOString(),
            },
            false,
          ),
        )
      }
    } catch (err) {
      logger.warn({ jobId, err: (err as Error).message }, 'could not record why the job waits')
    }
    await job.moveToDelayed(Date.now() + delay, token)
    if (taker) {
      logger.info(
        { jobId, type, to: taker.hostId, ...fields },
        `handed over to ${taker.hostId}, which can run it`,
      )
      // When the job is due, every idle worker races for it, and this one may win every time: measured
      // with two BullMQ workers in one process, 55 put-backs in a row before the one that could run it
      // got it. This worker's slot (a one-slot host's only one) stays taken until the other has it.
      await sleep(delay + HANDOVER_HOLD_MS)
    }
    throw new DelayedError()
  }

  /**
   * A job that ends cancelled or failed for good keeps no partial output: the files under its prefix that
   * no manifest covers are removed, before the final state is stored and announced. A failure here is
   * logged; the reconciler sweeps such jobs again.
   */
  private async dropPartialOutput(prefix: string, log: Logger): Promise<void> {
    const { s3, config } = this.deps
    try {
      const removed = await removeUncovered(s3.client, config.s3.bucket, prefix)
      if (removed > 0) log.info({ removed, prefix }, 'removed partial artifacts of an unfinished job')
    } catch (err) {
      log.warn(
        { err: (err as Error).message, prefix },
        'could not remove partial artifacts; the reconciler retries',
      )
    }
  }
}
