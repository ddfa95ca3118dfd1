import { mkdir, rm } from 'node:fs/promises'
import { createServer, type Server } from 'node:http'
import path from 'node:path'
import { CreateBucketCommand, HeadBucketCommand, type S3Client } from '@aws-sdk/client-s3'
import { DelayedError, type Job, Queue, UnrecoverableError, WaitingError, Worker } from 'bullmq'
import type { Logger } from 'pino'
import * as v from 'valibot'
import { handlerFor } from '../functions/index.ts'
import type { AnyHandler } from '../functions/sdk/define.ts'
import { checkBackends, createRedis } from '../schema/clients.ts'
import type { JobError } from '../schema/common.ts'
import { ERROR_REASONS } from '../schema/common.ts'
import type { Config } from '../schema/config.ts'
import type { Database } from '../schema/db/connect.ts'
import { ENGINE_SETUP, ENGINES, type Engine, isEngineOf, withDefaultEngine } from '../schema/engines.ts'
import { JobEnvelope } from '../schema/envelope.ts'
import { describeIssues, toFieldIssues } from '../schema/issues.ts'
import { findUnsafeJson } from '../schema/json-safety.ts'
import { CANCEL_CHANNEL, cancelKey, QUEUE_NAME } from '../schema/keys.ts'
import { JOB_TYPES, type JobType, outputPrefixFor } from '../schema/params/index.ts'
import { emitEvent } from '../schema/progress-log.ts'
import {
  describeEngines,
  detectEngines,
  type EngineDetection,
  engineWaitDelay,
  type HostEngines,
  probeComfyui,
} from './engines.ts'
import { pickSlot, readGpuProcesses, readGpus, type Slot, slotsFor } from './gpus.ts'
import { HostMetrics, QUEUE_STATES } from './metrics.ts'
import { S3ModelFetcher } from './model-fetch.ts'
import { groupMembers } from './process-group.ts'
import { RECONCILE_ACTIONS, Reconciler, type ReconcilerOptions } from './reconciler.ts'
import { Reporter } from './reporter.ts'
import { ChildSpawn, JobProcess, type RunOutcome } from './runner.ts'
import {
  invalidateManifest,
  outputPrefixProblem,
  publishManifest,
  removeUncovered,
  S3ArtifactStore,
} from './s3-artifacts.ts'
import { JobState } from './state.ts'

/** Lock renewed every 5 s; a host that dies loses its jobs to the stalled check within about 15 s. */
export const LOCK_DURATION_MS = 10_000
export const STALLED_INTERVAL_MS = 5_000
/** How long a job waits before it looks again for a GPU with enough free memory. */
const VRAM_RETRY_MS = 5_000

export interface GpuHostOptions {
  config: Config
  database: Database
  s3: { client: S3Client; endpoint: string }
  logger: Logger
  /** Interval and grace of the reconciler (tests make them short). */
  reconciler?: ReconcilerOptions
  /**
   * Re-checks of a job for an engine this host lacks: first after `baseMs`, doubling to `maxMs`
   * (default 5 s to 60 s; tests make them short).
   */
  engineWait?: { baseMs: number; maxMs: number }
  /** Test fixtures: run this module's default handler for a type instead of the registry's. */
  handlerModules?: Partial<Record<JobType, string>>
  version?: string
}

interface RunningJob {
  jobId: string
  type: JobType
  cancelRequested: boolean
  proc: JobProcess | undefined
  reporter: Reporter | undefined
  /** Set once the attempt is recorded as started. */
  attempt?: number
}

const backoffDelay = (baseMs: number, attempt: number): number =>
  Math.round(Math.min(baseMs * 2 ** (attempt - 1), 3_600_000) * (0.5 + Math.random() * 0.5))

/**
 * The GPU host: takes jobs from queue `gpu-jobs` as slots free up and runs each in a fresh process with
 * a hard timeout; publishes progress, stores state, uploads artifacts, exports metrics.
 */
export class GpuHost {
  readonly metrics: HostMetrics
  private readonly redis
  private readonly subscriber
  private readonly state: JobState
  private readonly running = new Map<string, RunningJob>()
  private slots: Slot[] = []
  /** One warm, unused job process per slot, forked while the slot is idle. */
  private readonly spares = new Map<number, ChildSpawn>()
  private worker: Worker | undefined
  private queue: Queue | undefined
  private server: Server | undefined
  private samplers: NodeJS.Timeout[] = []
  private reconciler: Reconciler | undefined
  private closing = false
  private gpuChecks = false
  /** What this host can run, detected at start; until then only `simulate`. */
  private engines: EngineDetection = {
    engines: Object.fromEntries(JOB_TYPES.map((t) => [t, ['simulate']])) as HostEngines,
    missing: {},
  }

  constructor(private readonly opts: GpuHostOptions) {
    const { config } = opts
    this.redis = createRedis(config.redisUrl)
    this.subscriber = createRedis(config.redisUrl)
    this.redis.on('error', (err) => opts.logger.warn({ err: err.message }, 'redis error'))
    this.subscriber.on('error', (err) => opts.logger.warn({ err: err.message }, 'redis subscriber error'))
    this.state = new JobState(opts.database.db, config.hostId, (msg) => opts.logger.warn(msg))
    this.metrics = new HostMetrics({
      version: opts.version ?? '0.1.0',
      running: () =>
        [...this.running.values()].flatMap((j) =>
          j.reporter
            ? [{ type: j.type, progress: j.reporter.progress, lastProgressAt: j.reporter.lastProgressAt }]
            : [],
        ),
    })
    for (const type of JOB_TYPES) {
      // Every series exists from the start, so rate() and increase() count the first job of each kind too.
      for (const status of ['completed', 'failed', 'cancelled', 'retrying']) {
        this.metrics.jobsTotal.inc({ type, status }, 0)
        this.metrics.jobDuration.zero({ type, status })
      }
      this.metrics.queueWait.zero({ type })
      for (const reason of ERROR_REASONS) this.metrics.jobErrors.inc({ type, reason }, 0)
      for (const action of RECONCILE_ACTIONS) this.metrics.reconciled.inc({ type, action }, 0)
      for (const counter of [
        this.metrics.attempts,
        this.metrics.retries,
        this.metrics.timeouts,
        this.metrics.cancellations,
      ])
        counter.inc({ type }, 0)
    }
  }

  get hostId(): string {
    return this.opts.config.hostId
  }

  get port(): number {
    const addr = this.server?.address()
    return typeof addr === 'object' && addr ? addr.port : 0
  }

  async start(): Promise<void> {
    const { config, logger } = this.opts
    await Promise.all([this.redis.connect(), this.subscriber.connect()])
    await this.ensureBucket()
    this.engines = await detectEngines(config.engines, process.env.PATH)
    this.metrics.setEngines(ENGINES, this.engines.engines)
    logger.info(
      { engines: this.engines.engines, lacking: this.engines.missing },
      `engines: ${describeEngines(this.engines)}`,
    )
    for (const type of JOB_TYPES) {
      const chosen = config.defaultEngines[type]
      if (chosen && !this.hasEngine(type, chosen))
        logger.warn(
          `DEFAULT_ENGINE_${type.toUpperCase()}=${chosen}, but this host lacks ${chosen}: ${ENGINE_SETUP[chosen]}`,
        )
    }
    const gpus = await readGpus()
    this.gpuChecks = gpus !== null && gpus.length > 0
    if (!this.gpuChecks)
      logger.info(
        { slots: config.gpuSlots },
        'no GPU found (nvidia-smi absent): GPU memory checks are skipped; using GPU_SLOTS virtual slots',
      )
    else logger.info({ gpus: gpus?.map((g) => `${g.index}:${g.name}`) }, 'GPUs found')
    this.slots = slotsFor(gpus, config.gpuSlots)
    this.metrics.initSlots(this.slots)
    for (const slot of this.slots) this.refillSpare(slot)
    await this.sampleGpus()

    await this.subscriber.subscribe(CANCEL_CHANNEL)
    this.subscriber.on('message', (_channel: string, raw: string) => {
      const jobId = (() => {
        try {
          return (JSON.parse(raw) as { jobId?: unknown }).jobId
        } catch {
          return undefined
        }
      })()
      if (typeof jobId === 'string') this.cancelLocal(jobId)
    })

    const connection = createRedis(config.redisUrl)
    const workerConnection = createRedis(config.redisUrl)
    // Errors are reported by the Worker's own 'error' event; ioredis reconnects by itself.
    for (const c of [connection, workerConnection]) c.on('error', () => {})
    this.queue = new Queue(QUEUE_NAME, { connection, prefix: config.queuePrefix })
    this.queue.on('error', (err) => logger.warn({ err: err.message }, 'queue error'))
    this.worker = new Worker(QUEUE_NAME, (job, token) => this.process(job, token), {
      connection: workerConnection,
      prefix: config.queuePrefix,
      concurrency: this.slots.length,
      lockDuration: LOCK_DURATION_MS,
      stalledInterval: STALLED_INTERVAL_MS,
      // A crash of the host is an attempt like any other; the job's own attempt budget bounds the loop.
      maxStalledCount: 1000,
      autorun: false,
    })
    this.worker.on('error', (err) => logger.warn({ err: err.message }, 'worker error'))

    this.server = createServer((req, res) => void this.serveHttp(req.url ?? '/', res))
    await new Promise<void>((resolve, reject) => {
      this.server?.once('error', reject)
      this.server?.listen(config.metricsPort, config.metricsHost, resolve)
    })
    this.samplers.push(
      setInterval(() => void this.sampleQueue(), 5000),
      setInterval(() => void this.sampleGpus(), 5000),
    )
    for (const t of this.samplers) t.unref()
    this.reconciler = new Reconciler(
      {
        redis: this.redis,
        queue: this.queue,
        state: this.state,
        s3: this.opts.s3.client,
        bucket: config.s3.bucket,
        queuePrefix: config.queuePrefix,
        hostId: config.hostId,
        metrics: this.metrics,
        logger,
        isLocal: (jobId) => this.running.has(jobId),
      },
      this.opts.reconciler,
    )
    this.reconciler.start()
    void this.worker.run().catch((err: unknown) => logger.error({ err }, 'worker stopped'))
    logger.info(
      {
        host: config.hostId,
        slots: this.slots.length,
        metrics: `http://${config.metricsHost.includes(':') ? `[${config.metricsHost}]` : config.metricsHost}:${this.port}/metrics`,
      },
      'GPU host started',
    )
  }

  /**
   * Graceful stop: take no new job, let running ones finish within SHUTDOWN_GRACE_SEC, then kill the rest
   * and put them straight back in the queue.
   */
  async close(): Promise<void> {
    if (this.closing) return
    this.closing = true
    const { config, logger } = this.opts
    for (const t of this.samplers) clearInterval(t)
    await this.reconciler?.stop()
    if (this.worker) {
      await this.worker.pause(true)
      const deadline = Date.now() + config.shutdownGraceSec * 1000
      while (this.running.size > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100))
      if (this.running.size > 0) {
        logger.warn({ jobs: [...this.running.keys()] }, 'shutdown grace over: interrupting running jobs')
        for (const job of this.running.values()) job.proc?.abort('shutdown')
      }
      await this.worker.close()
    }
    await Promise.all([...this.spares.values()].map((spare) => spare.discard()))
    this.spares.clear()
    await this.queue?.close()
    await new Promise<void>((resolve) => (this.server ? this.server.close(() => resolve()) : resolve()))
    this.server?.closeAllConnections()
    this.subscriber.disconnect()
    await this.redis.quit().catch(() => this.redis.disconnect())
  }

  private cancelLocal(jobId: string): void {
    const job = this.running.get(jobId)
    if (!job) return
    job.cancelRequested = true
    job.proc?.abort('cancelled')
  }

  private async ensureBucket(): Promise<void> {
    const { client } = this.opts.s3
    const Bucket = this.opts.config.s3.bucket
    try {
      await client.send(new HeadBucketCommand({ Bucket }))
    } catch {
      await client.send(new CreateBucketCommand({ Bucket })).catch((err: { name?: string }) => {
        if (err.name !== 'BucketAlreadyOwnedByYou' && err.name !== 'BucketAlreadyExists') throw err
      })
    }
  }

  private async serveHttp(url: string, res: import('node:http').ServerResponse): Promise<void> {
    const route = url.split('?')[0]
    try {
      if (route === '/metrics') {
        res.setHeader('content-type', this.metrics.registry.contentType)
        res.end(await this.metrics.registry.metrics())
      } else if (route === '/healthz') {
        res.setHeader('content-type', 'application/json')
        res.end(
          JSON.stringify({
            ok: true,
            host: this.opts.config.hostId,
            running: this.running.size,
            closing: this.closing,
          }),
        )
      } else if (route === '/readyz') {
        const checks = await this.readiness()
        const ok = Object.values(checks).every((c) => c === 'ok') && !this.closing
        res.statusCode = ok ? 200 : 503
        res.setHeader('content-type', 'application/json')
        res.end(JSON.stringify({ ok, checks, closing: this.closing, engines: this.engines.engines }))
      } else {
        res.statusCode = 404
        res.end()
      }
    } catch (err) {
      res.statusCode = 500
      res.end(String(err))
    }
  }

  async readiness(): Promise<Record<string, string>> {
    const { comfyuiUrl } = this.opts.config.engines
    const [backends, comfyui] = await Promise.all([
      checkBackends({
        redis: this.redis,
        database: this.opts.database,
        s3: this.opts.s3.client,
        bucket: this.opts.config.s3.bucket,
      }),
      // A host configured for ComfyUI whose ComfyUI does not answer is not ready: its render jobs would
      // only fail and retry. Readiness gates roll-outs, not intake (hosts pull jobs), so training jobs
      // go on meanwhile.
      comfyuiUrl === undefined ? undefined : probeComfyui(comfyuiUrl),
    ])
    return comfyui === undefined ? backends : { ...backends, comfyui }
  }

  /** Whether this host runs `type` jobs on `engine`. */
  hasEngine(type: JobType, engine: Engine): boolean {
    return this.engines.engines[type].includes(engine)
  }

  /**
   * Puts back a job for an engine this host lacks, without an attempt, for another host to take:
   * delayed (never spinning), its row still waiting with a message that says what to configure. When no
   * host has the engine the job waits so, re-checked less and less often, until one starts or the job
   * is cancelled.
   */
  private async waitForEngine(job: Job, token: string | undefined, entry: RunningJob, engine: Engine) {
    const { jobId, type } = entry
    const message = `waiting for a GPU host with engine ${engine}: ${ENGINE_SETUP[engine]} on one`
    const delay = engineWaitDelay(
      Date.now() - job.timestamp,
      this.opts.engineWait ?? { baseMs: 5_000, maxMs: 60_000 },
    )
    // The message and its event once, not at every re-check; best effort, since putting the job back is
    // what must happen (a store that fails here must not fail the job).
    try {
      const row = await this.state.noteWaiting(jobId, message)
      if (row) {
        this.opts.logger.info({ jobId, type, engine }, message)
        await this.state.recordEvent(
          await emitEvent(this.redis, {
            jobId,
            type,
            status: row.status,
            progress: row.progress,
            message,
            attempt: row.attempt,
            timestamp: new Date().toISOString(),
          }),
        )
      }
    } catch (err) {
      this.opts.logger.warn({ jobId, err: (err as Error).message }, 'could not record why the job waits')
    }
    await job.moveToDelayed(Date.now() + delay, token)
    throw new DelayedError()
  }

  private async sampleQueue(): Promise<void> {
    if (!this.queue) return
    try {
      const counts = await this.queue.getJobCounts(...QUEUE_STATES)
      for (const state of QUEUE_STATES) this.metrics.queueJobs.set({ state }, counts[state] ?? 0)
      const oldest = [
        ...(await this.queue.getJobs(['wait'], -1, -1)),
        ...(await this.queue.getJobs(['prioritized'], 0, 50)),
      ].reduce((min, j) => Math.min(min, j?.timestamp ?? min), Date.now())
      this.metrics.oldestWaiting.set((Date.now() - oldest) / 1000)
    } catch (err) {
      this.opts.logger.debug({ err }, 'queue sample failed')
    }
  }

  private async sampleGpus(): Promise<void> {
    if (!this.gpuChecks) return
    const gpus = await readGpus()
    for (const slot of this.slots) {
      const g = gpus?.find((x) => x.uuid === slot.gpu.uuid)
      if (!g) continue
      this.metrics.memUsed.set(this.metrics.gpuLabels(slot), g.memoryUsedMb * 1024 * 1024)
      this.metrics.memTotal.set(this.metrics.gpuLabels(slot), g.memoryTotalMb * 1024 * 1024)
    }
  }

  private acquireSlot(chosen?: Slot): Slot {
    const slot = chosen ?? this.slots.find((s) => !s.busy)
    // The worker's concurrency equals the slot count, so a free slot always exists here.
    if (!slot || slot.busy) throw new Error('no free GPU slot')
    slot.busy = true
    this.metrics.setBusy(slot, true)
    return slot
  }

  private releaseSlot(slot: Slot): void {
    slot.busy = false
    this.metrics.setBusy(slot, false)
    this.refillSpare(slot)
  }

  /** Forks the slot's next job process ahead of time (never while its job runs, to leave it the CPU). */
  private refillSpare(slot: Slot): void {
    if (this.closing || this.spares.get(slot.id)?.alive) return
    try {
      const spare = new ChildSpawn(slot.cudaVisibleDevices)
      this.spares.set(slot.id, spare)
      spare.child.once('exit', () => {
        if (this.spares.get(slot.id) === spare) this.spares.delete(slot.id)
      })
      // Its output before a job adopts it is only Node.js start-up noise.
      spare.child.stdout?.resume()
      spare.child.stderr?.resume()
    } catch (err) {
      this.opts.logger.warn({ err }, 'could not fork a spare job process')
    }
  }

  /**
   * The slot's warm spare, if it is alive (still starting is fine: it is ahead of a new fork); each spare
   * serves one job.
   */
  private takeSpare(slot: Slot): ChildSpawn | undefined {
    const spare = this.spares.get(slot.id)
    this.spares.delete(slot.id)
    if (spare?.alive) return spare
    if (spare) void spare.discard()
    return undefined
  }

  /** Processes that still hold memory on the slot's GPU after the job's group is gone: a leak. */
  private async checkGpuRelease(slot: Slot, pids: number[]): Promise<void> {
    if (!this.gpuChecks || !slot.gpu.uuid) return
    const procs = await readGpuProcesses()
    const leaked = procs?.filter((p) => p.gpuUuid === slot.gpu.uuid && pids.includes(p.pid)) ?? []
    if (leaked.length > 0) {
      this.metrics.memLeaks.inc(this.metrics.gpuLabels(slot))
      this.opts.logger.error(
        { gpu: slot.gpu.uuid, leaked },
        'job processes still hold GPU memory after the job ended',
      )
    }
  }

  /**
   * A job that ends cancelled or failed for good keeps no partial output: the files under its prefix that
   * no manifest covers are removed, before the final state is stored and announced. A failure here is
   * logged; the reconciler sweeps such jobs again.
   */
  private async dropPartialOutput(prefix: string, log: Logger): Promise<void> {
    const { s3, config } = this.opts
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

  private jobError(reason: JobError['reason'], message: string, code = reason.toUpperCase()): JobError {
    return { code, reason, message }
  }

  /** BullMQ processor: one attempt of one job. */
  private async process(job: Job, token: string | undefined): Promise<unknown> {
    const parsed = v.safeParse(JobEnvelope, { ...(job.data as object), jobId: job.id, type: job.name })
    if (!parsed.success) {
      const message = `invalid job payload: ${describeIssues(toFieldIssues(parsed.issues))}`
      await this.failInvalid(job, message)
      throw new UnrecoverableError(message)
    }
    const envelope = parsed.output
    const { jobId, type } = envelope
    let handler: AnyHandler
    try {
      handler = handlerFor(type)
    } catch (err) {
      await this.failInvalid(job, (err as Error).message)
      throw new UnrecoverableError((err as Error).message)
    }
    // Any producer can send any prefix: only the type's own folder for this jobId is written to.
    const prefixProblem = outputPrefixProblem(type, jobId, envelope.artifacts?.outputPrefix)
    if (prefixProblem) {
      await this.failInvalid(job, `invalid job payload: ${prefixProblem}`)
      throw new UnrecoverableError(prefixProblem)
    }
    // A job from another producer that names no engine gets this host's DEFAULT_ENGINE_<TYPE>, written
    // into the job (and its row) so that every host that meets it afterwards runs the same engine.
    const params = withDefaultEngine(type, envelope.params, this.opts.config.defaultEngines)
    const resolved = params !== envelope.params
    envelope.params = params
    const maxAttempts = envelope.maxAttempts ?? handler.maxAttempts
    const timeoutSec = envelope.timeoutSec ?? handler.timeoutSec
    const outputPrefix = outputPrefixFor(type, jobId)
    await this.state.ensureJob({ ...envelope, maxAttempts, outputPrefix })
    // Best effort: this attempt runs on the resolved engine either way, and a failed write only means
    // that a host meeting the job later resolves it again by its own default.
    if (resolved)
      await job
        .updateData({ ...(job.data as object), params })
        .catch((err: unknown) =>
          this.opts.logger.warn({ jobId, err: (err as Error).message }, 'could not store the default engine'),
        )

    const entry: RunningJob = { jobId, type, cancelRequested: false, proc: undefined, reporter: undefined }
    this.running.set(jobId, entry)
    try {
      return await this.runAttempt(job, token, entry, {
        handler,
        maxAttempts,
        timeoutSec,
        outputPrefix,
        envelope,
      })
    } catch (err) {
      if (err instanceof DelayedError || err instanceof WaitingError || err instanceof UnrecoverableError)
        throw err
      // A fault of the host itself (not of the job): end the attempt so the row does not stay running.
      const message = `host error: ${(err as Error).message}`
      this.opts.logger.error({ err, jobId }, message)
      if (entry.attempt !== undefined)
        await this.state
          .finishAttempt(jobId, entry.attempt, {
            status: 'failed',
            progress: entry.reporter?.progress ?? 0,
            message,
            error: this.jobError('crash', message),
          })
          .catch(() => {})
      throw new UnrecoverableError(message)
    } finally {
      this.running.delete(jobId)
    }
  }

  private async failInvalid(job: Job, message: string): Promise<void> {
    const type = (JOB_TYPES as readonly string[]).includes(job.name) ? (job.name as JobType) : undefined
    const jobId = job.id
    this.opts.logger.warn({ jobId, name: job.name }, message)
    if (!type || !jobId) return
    // Params Postgres cannot store (NUL, lone surrogates, too deep) are left out of the row: the failure
    // must be recorded, and the message already says what was wrong with them.
    const params =
      typeof job.data?.params === 'object' && job.data.params && findUnsafeJson(job.data.params) === null
        ? (job.data.params as Record<string, unknown>)
        : {}
    await this.state.ensureJob({
      jobId,
      type,
      params,
      maxAttempts: 1,
      outputPrefix: outputPrefixFor(type, jobId),
    })
    const row = await this.state.startAttempt(jobId)
    if (!row) return
    this.metrics.jobsTotal.inc({ type, status: 'failed' })
    this.metrics.jobErrors.inc({ type, reason: 'invalid_params' })
    const wrote = await this.state.finishAttempt(jobId, row.attempt, {
      status: 'failed',
      progress: 0,
      message,
      error: this.jobError('invalid_params', message),
    })
    if (wrote)
      await this.state.recordEvent(
        await emitEvent(
          this.redis,
          {
            jobId,
            type,
            status: 'failed',
            progress: 0,
            message,
            attempt: row.attempt,
            timestamp: new Date().toISOString(),
          },
          { terminal: true },
        ),
      )
  }

  private async runAttempt(
    job: Job,
    token: string | undefined,
    entry: RunningJob,
    o: {
      handler: AnyHandler
      maxAttempts: number
      timeoutSec: number
      outputPrefix: string
      envelope: JobEnvelope
    },
  ): Promise<unknown> {
    const { config, logger, s3 } = this.opts
    const { jobId, type } = entry
    const log = logger.child({ jobId, type })

    if ((await this.redis.exists(cancelKey(jobId))) === 1) entry.cancelRequested = true
    // Never run a job on an engine this host lacks (a cancelled one goes on, to end as cancelled). An
    // engine the type does not have is left to the params check, which fails the job naming it.
    const engine = o.envelope.params.engine
    if (!entry.cancelRequested && isEngineOf(type, engine) && !this.hasEngine(type, engine))
      await this.waitForEngine(job, token, entry, engine)
    // VRAM-aware: take the job only onto a GPU with enough free memory; else put it back for a while,
    // without counting an attempt (another process may hold the memory, e.g. ComfyUI's loaded models).
    const readings = this.gpuChecks && !entry.cancelRequested ? await readGpus() : null
    const room = pickSlot(this.slots, readings, o.handler.gpu.vramMb)
    if ('noRoom' in room) {
      log.info({ needMb: o.handler.gpu.vramMb, bestFreeMb: room.bestFreeMb }, 'waiting for GPU memory')
      await job.moveToDelayed(Date.now() + VRAM_RETRY_MS, token)
      throw new DelayedError()
    }
    const row = await this.state.startAttempt(jobId)
    if (!row) {
      log.info('job is already finished (cancelled before it started); skipping')
      return { skipped: true }
    }
    const attempt = row.attempt
    entry.attempt = attempt
    const reporter = new Reporter(this.redis, this.state, job, { jobId, type, attempt }, (msg, err) =>
      log.warn({ err }, msg),
    )
    entry.reporter = reporter
    const finish = async (
      status: 'completed' | 'failed' | 'cancelled' | 'retrying' | 'queued',
      progress: number,
      message: string,
      extra: {
        result?: unknown
        error?: JobError
        artifacts?: RunOutcome['artifacts']
        nextAttemptAt?: Date
      } = {},
    ) => {
      await reporter.flush()
      const terminal = status === 'completed' || status === 'failed' || status === 'cancelled'
      const wrote = await this.state.finishAttempt(jobId, attempt, { status, progress, message, ...extra })
      // Nothing to announce when the job had ended already (cancelled meanwhile by a gateway).
      if (!wrote) return false
      const event = await reporter.emit(status, progress, message, terminal)
      await this.state.recordEvent(event)
      return true
    }

    if (entry.cancelRequested) {
      this.metrics.jobsTotal.inc({ type, status: 'cancelled' })
      await this.dropPartialOutput(o.outputPrefix, log)
      await finish('cancelled', row.progress, 'cancelled before it started', {
        error: this.jobError('cancelled', 'cancelled before it started'),
      })
      throw new UnrecoverableError('cancelled')
    }
    if (attempt > o.maxAttempts) {
      const message = `gave up after ${o.maxAttempts} attempts (the last ones were interrupted by host failures)`
      this.metrics.jobsTotal.inc({ type, status: 'failed' })
      this.metrics.jobErrors.inc({ type, reason: 'crash' })
      await this.dropPartialOutput(o.outputPrefix, log)
      await finish('failed', row.progress, message, { error: this.jobError('crash', message) })
      throw new UnrecoverableError(message)
    }

    this.metrics.attempts.inc({ type })
    this.metrics.queueWait.observe(
      { type },
      Math.max(0, (Date.now() - (job.timestamp + (job.delay ?? 0))) / 1000),
    )
    await this.state.recordEvent(
      await reporter.emit('running', 0, `attempt ${attempt}/${o.maxAttempts} started on ${config.hostId}`),
    )
    reporter.progress = 0

    const startedAt = performance.now()
    let outcome: RunOutcome
    // Chosen again with no await before taking it: a concurrent job may have taken the roomiest GPU meanwhile.
    const pick = pickSlot(this.slots, readings, o.handler.gpu.vramMb)
    const slot = this.acquireSlot('slot' in pick ? pick.slot : undefined)
    const scratch = path.join(config.dataDir, 'scratch', `${jobId}-${attempt}`)
    try {
      try {
        await invalidateManifest(s3.client, config.s3.bucket, o.outputPrefix)
      } catch (err) {
        outcome = {
          ok: false,
          error: {
            name: 'StorageError',
            message: `S3 unavailable: ${(err as Error).message}`,
            code: 'STORAGE',
            reason: 'storage',
            retryable: true,
            exitCode: null,
            signal: null,
            stderrTail: '',
          },
          artifacts: [],
          pid: 0,
          groupGone: true,
        }
        throw outcome
      }
      await mkdir(scratch, { recursive: true })
      const proc = new JobProcess(
        {
          job: { jobId, type, params: o.envelope.params, attempt },
          gpu: slot.gpu,
          cudaVisibleDevices: slot.cudaVisibleDevices,
          paths: { scratch, models: config.modelsDir, data: config.dataDir },
          engines: config.engines,
          artifacts: new S3ArtifactStore(s3.client, config.s3.bucket, o.outputPrefix),
          models: new S3ModelFetcher(s3.client, config.s3.bucket, config.modelsDir),
          onModelCache: (model, outcome, bytes) => this.metrics.modelCache(model, outcome, bytes),
          timeoutMs: o.timeoutSec * 1000,
          killGraceMs: config.killGraceSec * 1000,
          handlerModule: this.opts.handlerModules?.[type],
          onProgress: (pct, msg) => reporter.report(pct, msg),
          onLog: (level, msg, fields) => log[level]({ ...fields, attempt }, msg),
          onStarted: (ms) => this.metrics.subprocessStart.observe(ms / 1000),
        },
        this.takeSpare(slot),
      )
      entry.proc = proc
      void this.state.setAttemptPid(jobId, attempt, proc.pid).catch(() => {})
      // A cancel that arrived while the process was starting.
      if (entry.cancelRequested) proc.abort('cancelled')
      else if (this.closing) proc.abort('shutdown')
      outcome = await proc.done
      const left = await groupMembers(proc.pid)
      await this.checkGpuRelease(slot, [proc.pid, ...(left ?? [])])
      if (!outcome.groupGone)
        log.error({ pid: proc.pid, left }, 'process group still has members after SIGKILL')
    } catch (err) {
      if (!(err && typeof err === 'object' && 'ok' in err)) throw err
      outcome = err as RunOutcome
    } finally {
      this.releaseSlot(slot)
      await rm(scratch, { recursive: true, force: true }).catch(() => {})
    }
    const seconds = (performance.now() - startedAt) / 1000

    if (outcome.ok) {
      try {
        await publishManifest(s3.client, config.s3.bucket, o.outputPrefix, {
          jobId,
          type,
          attempt,
          createdAt: new Date().toISOString(),
          files: outcome.artifacts,
        })
      } catch (err) {
        outcome = {
          ok: false,
          error: {
            name: 'StorageError',
            message: `could not write the manifest: ${(err as Error).message}`,
            code: 'STORAGE',
            reason: 'storage',
            retryable: true,
            exitCode: 0,
            signal: null,
            stderrTail: '',
          },
          artifacts: outcome.artifacts,
          pid: outcome.pid,
          groupGone: outcome.groupGone,
        }
      }
    }
    if (outcome.ok) {
      // Metrics first: whoever sees the final event may scrape them at once.
      this.metrics.jobsTotal.inc({ type, status: 'completed' })
      this.metrics.jobDuration.observe({ type, status: 'completed' }, seconds)
      await finish('completed', 100, reporter.message || 'completed', {
        result: outcome.result ?? null,
        artifacts: outcome.artifacts,
      })
      log.info({ attempt, seconds: seconds.toFixed(2), artifacts: outcome.artifacts.length }, 'job completed')
      return outcome.result
    }

    const e = outcome.error
    const error = this.jobError(e.reason, e.message, e.code)
    if (e.reason === 'shutdown') {
      // Straight back to the queue: another host (or this one, restarted) takes it without waiting for a stalled check.
      await finish('queued', reporter.progress, 'interrupted by host shutdown; back in the queue', { error })
      log.warn({ attempt }, 'job interrupted by shutdown; requeued')
      await job.moveToWait(token)
      throw new WaitingError()
    }
    this.metrics.jobDuration.observe(
      { type, status: e.reason === 'cancelled' ? 'cancelled' : 'failed' },
      seconds,
    )
    this.metrics.jobErrors.inc({ type, reason: e.reason })
    if (e.reason === 'timeout') this.metrics.timeouts.inc({ type })
    if (e.reason === 'cancelled') {
      this.metrics.cancellations.inc({ type })
      this.metrics.jobsTotal.inc({ type, status: 'cancelled' })
      await this.dropPartialOutput(o.outputPrefix, log)
      await finish('cancelled', reporter.progress, 'cancelled', { error })
      log.info({ attempt }, 'job cancelled')
      throw new UnrecoverableError('cancelled')
    }
    const stderr = e.stderrTail ? `\n${e.stderrTail}` : ''
    if (e.retryable && attempt < o.maxAttempts) {
      const delay = backoffDelay(config.retryBackoffMs, attempt)
      const nextAttemptAt = new Date(Date.now() + delay)
      this.metrics.retries.inc({ type })
      this.metrics.jobsTotal.inc({ type, status: 'retrying' })
      const wrote = await finish(
        'retrying',
        reporter.progress,
        `attempt ${attempt} failed (${e.reason}): ${e.message}; retrying in ${(delay / 1000).toFixed(1)}s`,
        {
          error,
          nextAttemptAt,
        },
      )
      // Cancelled while this attempt was failing: the row is final already, so no further attempt.
      if (!wrote || entry.cancelRequested) {
        await this.dropPartialOutput(o.outputPrefix, log)
        throw new UnrecoverableError('cancelled')
      }
      log.warn({ attempt, reason: e.reason, delay, stderr: e.stderrTail }, 'attempt failed; will retry')
      await job.moveToDelayed(nextAttemptAt.getTime(), token)
      throw new DelayedError()
    }
    this.metrics.jobsTotal.inc({ type, status: 'failed' })
    await this.dropPartialOutput(o.outputPrefix, log)
    await finish('failed', reporter.progress, `failed (${e.reason}): ${e.message}`, { error })
    log.warn({ attempt, reason: e.reason, stderr }, 'job failed')
    throw new UnrecoverableError(`${e.reason}: ${e.message}`)
  }
}
