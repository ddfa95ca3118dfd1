import { setTimeout as sleep } from 'node:timers/promises'
import type { S3Client } from '@aws-sdk/client-s3'
import { DelayedError, type Job, Queue, UnrecoverableError, WaitingError, Worker } from 'bullmq'
import type { Logger } from 'pino'
import { checkBackends, createRedis } from '../schema/clients.ts'
import type { Config } from '../schema/config.ts'
import type { Database } from '../schema/db/connect.ts'
import { ENGINE_SETUP, ENGINES, type Engine } from '../schema/engines.ts'
import { QUEUE_NAME } from '../schema/keys.ts'
import { JOB_TYPES, type JobType } from '../schema/params/index.ts'
import { type AttemptPlan, AttemptRunner, type RunningJob } from './attempt.ts'
import { ensureBucket } from './bucket.ts'
import { CancelListener } from './cancel-listener.ts'
import {
  describeEngines,
  detectEngines,
  type EngineDetection,
  type HostEngines,
  probeComfyui,
} from './engines.ts'
import { readGpuList, readGpus, slotsFor } from './gpus.ts'
import { HealthServer } from './health-server.ts'
import { Heartbeat } from './heartbeat.ts'
import { admit } from './intake.ts'
import { HostMetrics } from './metrics.ts'
import { Reconciler, type ReconcilerOptions } from './reconciler.ts'
import { Samplers } from './samplers.ts'
import { SlotPool } from './slots.ts'
import { JobState } from './state.ts'

/** Lock renewed every 5 s; a host that dies loses its jobs to the stalled check within about 15 s. */
export const LOCK_DURATION_MS = 10_000
export const STALLED_INTERVAL_MS = 5_000

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
  /** How often the host beats its state to Redis for `GET /api/hosts` (default 5 s; tests make it short). */
  heartbeatMs?: number
}

/**
 * The GPU host: takes jobs from queue `gpu-jobs` as slots free up and runs each in a fresh process with
 * a hard timeout. It composes the parts: the slot pool and its spares (slots.ts), the cancel listener,
 * the health and metrics server, the samplers, the reconciler, and per job the intake and the attempt
 * runner (intake.ts, attempt.ts), which end every attempt through the lifecycle (schema/jobs).
 */
export class GpuHost {
  readonly metrics: HostMetrics
  private readonly redis
  private readonly subscriber
  private readonly state: JobState
  private readonly running = new Map<string, RunningJob>()
  private readonly slots: SlotPool
  private readonly samplers: Samplers
  private readonly attempts: AttemptRunner
  private readonly server: HealthServer
  private readonly heartbeat: Heartbeat
  private readonly cancels: CancelListener
  private worker: Worker | undefined
  private queue: Queue | undefined
  private reconciler: Reconciler | undefined
  private closing = false
  private gpuChecks = false
  /** What this host can run, detected at start; until then only `simulate`. */
  private engines: EngineDetection = {
    engines: Object.fromEntries(JOB_TYPES.map((t) => [t, ['simulate']])) as HostEngines,
    missing: {},
  }

  constructor(private readonly opts: GpuHostOptions) {
    const { config, logger } = opts
    this.redis = createRedis(config.redisUrl)
    this.subscriber = createRedis(config.redisUrl)
    this.redis.on('error', (err) => logger.warn({ err: err.message }, 'redis error'))
    this.subscriber.on('error', (err) => logger.warn({ err: err.message }, 'redis subscriber error'))
    this.state = new JobState(opts.database.db, config.hostId, (msg) => logger.warn(msg))
    const version = opts.version ?? '0.1.0'
    this.metrics = new HostMetrics({
      version,
      running: () =>
        [...this.running.values()].flatMap((j) =>
          j.reporter
            ? [{ type: j.type, progress: j.reporter.progress, lastProgressAt: j.reporter.lastProgressAt }]
            : [],
        ),
    })
    const gpuChecks = () => this.gpuChecks
    this.slots = new SlotPool({
      metrics: this.metrics,
      logger,
      gpuChecks,
      maxJobsPerGpu: config.maxJobsPerGpu,
      preload: Object.values(opts.handlerModules ?? {}),
      sparesPerDevice: config.spareProcesses,
    })
    this.samplers = new Samplers({
      metrics: this.metrics,
      logger,
      slots: () => this.slots.slots,
      gpuChecks,
      refreshLedger: () => this.slots.refresh(),
    })
    this.attempts = new AttemptRunner({
      config,
      logger,
      s3: opts.s3,
      redis: this.redis,
      state: this.state,
      metrics: this.metrics,
      slots: this.slots,
      gpuChecks,
      closing: () => this.closing,
      hasEngine: (type, engine) => this.hasEngine(type, engine),
      engineWait: opts.engineWait,
      handlerModules: opts.handlerModules,
    })
    this.server = new HealthServer({
      registry: this.metrics.registry,
      hostId: config.hostId,
      running: () => this.running.size,
      closing: () => this.closing,
      readiness: () => this.readiness(),
      engines: () => this.engines.engines,
    })
    this.cancels = new CancelListener({
      subscriber: this.subscriber,
      redis: this.redis,
      uncancelled: () => [...this.running.values()].filter((j) => !j.cancelRequested).map((j) => j.jobId),
      onCancel: (jobId) => this.cancelLocal(jobId),
      onError: (err) => logger.warn({ err: (err as Error).message }, 'could not look up cancels'),
    })
    this.heartbeat = new Heartbeat(
      this.redis,
      config.queuePrefix,
      {
        hostId: config.hostId,
        version,
        startedAt: Date.now(),
        closing: () => this.closing,
        slots: () => this.slots.slots,
        usage: (slot) => this.slots.usage(slot),
        gpus: () => this.samplers.gpus,
        engines: () => this.engines.engines,
        jobs: () => this.running.values(),
      },
      { intervalMs: opts.heartbeatMs, onError: (err) => logger.warn({ err }, 'heartbeat failed') },
    )
  }

  get hostId(): string {
    return this.opts.config.hostId
  }

  get port(): number {
    return this.server.port
  }

  async start(): Promise<void> {
    const { config, logger } = this.opts
    await Promise.all([this.redis.connect(), this.subscriber.connect()])
    await ensureBucket(this.opts.s3.client, config.s3.bucket)
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
    const listing = this.gpuChecks ? await readGpuList() : null
    this.slots.init(slotsFor(gpus, config.gpuSlots, listing))
    if (this.gpuChecks)
      logger.info(
        {
          devices: this.slots.slots.map((s) => `${s.gpu.index}:${s.gpu.name} (${s.gpu.vramTotalMb} MiB)`),
          maxJobsPerGpu: config.maxJobsPerGpu,
        },
        'GPUs found',
      )
    await this.samplers.sampleGpus()

    await this.cancels.start()

    const connection = createRedis(config.redisUrl)
    const workerConnection = createRedis(config.redisUrl)
    // Errors are reported by the Worker's own 'error' event; ioredis reconnects by itself.
    for (const c of [connection, workerConnection]) c.on('error', () => {})
    this.queue = new Queue(QUEUE_NAME, { connection, prefix: config.queuePrefix })
    this.queue.on('error', (err) => logger.warn({ err: err.message }, 'queue error'))
    this.worker = new Worker(QUEUE_NAME, (job, token) => this.process(job, token), {
      connection: workerConnection,
      prefix: config.queuePrefix,
      // As many as could run at once; one that does not fit yet waits in slots.ts, or goes back.
      concurrency: this.slots.capacity,
      lockDuration: LOCK_DURATION_MS,
      stalledInterval: STALLED_INTERVAL_MS,
      // A crash of the host is an attempt like any other; the job's own attempt budget bounds the loop.
      maxStalledCount: 1000,
      autorun: false,
    })
    this.worker.on('error', (err) => logger.warn({ err: err.message }, 'worker error'))

    await this.server.listen(config.metricsPort, config.metricsHost)
    this.samplers.start(this.queue)
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
    this.heartbeat.start()
    void this.worker.run().catch((err: unknown) => logger.error({ err }, 'worker stopped'))
    logger.info(
      {
        host: config.hostId,
        slots: this.slots.size,
        capacity: this.slots.capacity,
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
    this.samplers.stop()
    // A job waiting for GPU memory goes back to the queue now.
    this.slots.wake()
    // Shown draining while its jobs finish.
    if (this.heartbeat.running) await this.heartbeat.beat().catch(() => {})
    await this.reconciler?.stop()
    if (this.worker) {
      await this.worker.pause(true)
      const deadline = Date.now() + config.shutdownGraceSec * 1000
      while (this.running.size > 0 && Date.now() < deadline) await sleep(100)
      if (this.running.size > 0) {
        logger.warn({ jobs: [...this.running.keys()] }, 'shutdown grace over: interrupting running jobs')
        for (const job of this.running.values()) job.proc?.abort('shutdown')
      }
      await this.worker.close()
    }
    await this.slots.close()
    await this.heartbeat
      .stop()
      .catch((err: unknown) => logger.warn({ err }, 'could not remove the heartbeat'))
    await this.queue?.close()
    await this.server.close()
    this.cancels.stop()
    this.subscriber.disconnect()
    await this.redis.quit().catch(() => this.redis.disconnect())
  }

  private cancelLocal(jobId: string): void {
    const job = this.running.get(jobId)
    if (!job) return
    job.cancelRequested = true
    job.proc?.abort('cancelled')
    // A job waiting for GPU memory ends as cancelled now, not when room frees up.
    this.slots.wake()
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

  /** BullMQ processor: one attempt of one job. */
  private async process(job: Job, token: string | undefined): Promise<unknown> {
    const { logger } = this.opts
    const plan: AttemptPlan = await admit(job, {
      config: this.opts.config,
      logger,
      redis: this.redis,
      state: this.state,
      metrics: this.metrics,
    })
    const { jobId, type } = plan.envelope
    const entry: RunningJob = {
      jobId,
      type,
      cancelRequested: false,
      proc: undefined,
      reporter: undefined,
      vramMb: plan.gpu.vramMb,
    }
    this.running.set(jobId, entry)
    try {
      return await this.attempts.run(job, token, entry, plan)
    } catch (err) {
      if (err instanceof DelayedError || err instanceof WaitingError || err instanceof UnrecoverableError)
        throw err
      throw new UnrecoverableError(await this.attempts.endOnHostFault(entry, err, plan))
    } finally {
      this.running.delete(jobId)
    }
  }
}
