import { hostname } from 'node:os'
import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from 'prom-client'
import { ERROR_REASONS } from '../schema/common.ts'
import { type Counts, RECONCILE_ACTIONS } from '../schema/jobs/lifecycle.ts'
import { JOB_TYPES } from '../schema/params/index.ts'
import type { Slot } from './gpus.ts'

/** BullMQ job states sampled into `gpu_worker_queue_jobs{state}`. */
export const QUEUE_STATES = [
  'waiting',
  'active',
  'delayed',
  'failed',
  'prioritized',
  'completed',
  'waiting-children',
] as const

const DURATION_BUCKETS = [1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14_400, 28_800]
const WAIT_BUCKETS = [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600]
const START_BUCKETS = [0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1, 2, 5]

/**
 * The GPU host's Prometheus metrics. No job-id labels; GPU series carry `gpu`, `UUID` and `Hostname`
 * like dcgm-exporter's so PromQL can join them.
 */
export class HostMetrics {
  readonly registry = new Registry()
  readonly host = hostname()
  readonly jobsTotal: Counter<'type' | 'status'>
  readonly jobDuration: Histogram<'type' | 'status'>
  readonly jobErrors: Counter<'type' | 'reason'>
  readonly progress: Gauge<'type'>
  readonly gpuBusy: Gauge<'gpu' | 'UUID' | 'Hostname'>
  readonly runningPerGpu: Gauge<'gpu' | 'UUID' | 'Hostname'>
  readonly jobsRunning: Gauge<'type'>
  readonly queueJobs: Gauge<'state'>
  readonly oldestWaiting: Gauge
  readonly queueWait: Histogram<'type'>
  readonly subprocessStart: Histogram
  readonly attempts: Counter<'type'>
  readonly retries: Counter<'type'>
  readonly cancellations: Counter<'type'>
  readonly timeouts: Counter<'type'>
  readonly memUsed: Gauge<'gpu' | 'UUID' | 'Hostname'>
  readonly memTotal: Gauge<'gpu' | 'UUID' | 'Hostname'>
  readonly memLeaks: Counter<'gpu' | 'UUID' | 'Hostname'>
  readonly oldestProgressAge: Gauge<'type'>
  readonly reconciled: Counter<'type' | 'action'>
  readonly engineAvailable: Gauge<'type' | 'engine'>
  readonly modelCacheHits: Counter<'model'>
  readonly modelCacheMisses: Counter<'model'>
  readonly modelFetchedBytes: Counter<'model'>

  constructor(opts: {
    version: string
    running: () => Iterable<{ type: string; progress: number; lastProgressAt: number }>
  }) {
    const registers = [this.registry]
    collectDefaultMetrics({ register: this.registry })
    new Gauge({
      name: 'gpu_worker_info',
      help: 'Static information about this GPU host (value is always 1).',
      labelNames: ['version', 'host'],
      registers,
    }).set({ version: opts.version, host: this.host }, 1)
    this.jobsTotal = new Counter({
      name: 'gpu_worker_jobs_total',
      help: 'Job attempts finished on this host, by job type and outcome (completed, failed, cancelled, retrying).',
      labelNames: ['type', 'status'],
      registers,
    })
    this.jobDuration = new Histogram({
      name: 'gpu_worker_job_duration_seconds',
      help: 'Wall time of one job attempt in its subprocess, in seconds, by type and outcome.',
      labelNames: ['type', 'status'],
      buckets: DURATION_BUCKETS,
      registers,
    })
    this.jobErrors = new Counter({
      name: 'gpu_worker_job_errors_total',
      help: 'Failed job attempts, by type and reason (timeout, crash, invalid_params, ...).',
      labelNames: ['type', 'reason'],
      registers,
    })
    const running = opts.running
    this.progress = new Gauge({
      name: 'gpu_worker_progress_percent',
      help: 'Mean progress of the jobs running on this host, in percent, by type.',
      labelNames: ['type'],
      registers,
      collect() {
        this.reset()
        const sums = new Map<string, { sum: number; n: number }>()
        for (const job of running()) {
          const s = sums.get(job.type) ?? { sum: 0, n: 0 }
          s.sum += job.progress
          s.n += 1
          sums.set(job.type, s)
        }
        for (const [type, s] of sums) this.set({ type }, s.sum / s.n)
      },
    })
    this.oldestProgressAge = new Gauge({
      name: 'gpu_worker_oldest_progress_age_seconds',
      help: 'Longest time since a running job of this type last reported progress, in seconds (0: none running).',
      labelNames: ['type'],
      registers,
      collect() {
        this.reset()
        const now = Date.now()
        const ages = new Map<string, number>()
        for (const job of running())
          ages.set(job.type, Math.max(ages.get(job.type) ?? 0, (now - job.lastProgressAt) / 1000))
        for (const [type, age] of ages) this.set({ type }, age)
      },
    })
    this.jobsRunning = new Gauge({
      name: 'gpu_worker_jobs_running',
      help: 'Jobs running on this host now, by type.',
      labelNames: ['type'],
      registers,
      collect() {
        this.reset()
        const counts = new Map<string, number>()
        for (const job of running()) counts.set(job.type, (counts.get(job.type) ?? 0) + 1)
        for (const [type, n] of counts) this.set({ type }, n)
      },
    })
    const gpuLabels = ['gpu', 'UUID', 'Hostname'] as const
    this.gpuBusy = new Gauge({
      name: 'gpu_worker_gpu_busy',
      help: '1 while a job runs on this GPU (or virtual slot), else 0.',
      labelNames: gpuLabels,
      registers,
    })
    this.runningPerGpu = new Gauge({
      name: 'gpu_worker_running_jobs_per_gpu',
      help: 'Jobs running on this GPU (or virtual slot) now.',
      labelNames: gpuLabels,
      registers,
    })
    this.memUsed = new Gauge({
      name: 'gpu_worker_gpu_memory_used_bytes',
      help: 'GPU memory in use as nvidia-smi reports it, in bytes.',
      labelNames: gpuLabels,
      registers,
    })
    this.memTotal = new Gauge({
      name: 'gpu_worker_gpu_memory_total_bytes',
      help: 'GPU memory in total as nvidia-smi reports it, in bytes.',
      labelNames: gpuLabels,
      registers,
    })
    this.memLeaks = new Counter({
      name: 'gpu_worker_gpu_memory_leaks_total',
      help: 'Times a finished job still had a process holding memory on this GPU.',
      labelNames: gpuLabels,
      registers,
    })
    this.queueJobs = new Gauge({
      name: 'gpu_worker_queue_jobs',
      help: 'Jobs in the BullMQ queue by state, sampled by this host.',
      labelNames: ['state'],
      registers,
    })
    this.oldestWaiting = new Gauge({
      name: 'gpu_worker_oldest_waiting_job_age_seconds',
      help: 'Age of the oldest job waiting in the queue, in seconds (0: none waiting).',
      registers,
    })
    this.queueWait = new Histogram({
      name: 'gpu_worker_queue_wait_seconds',
      help: 'Time from enqueue to the start of an attempt, in seconds.',
      labelNames: ['type'],
      buckets: WAIT_BUCKETS,
      registers,
    })
    this.subprocessStart = new Histogram({
      name: 'gpu_worker_subprocess_start_seconds',
      help: 'Time from fork to the handler starting in the fresh job process, in seconds.',
      buckets: START_BUCKETS,
      registers,
    })
    this.attempts = new Counter({
      name: 'gpu_worker_attempts_total',
      help: 'Job attempts started.',
      labelNames: ['type'],
      registers,
    })
    this.retries = new Counter({
      name: 'gpu_worker_retries_total',
      help: 'Attempts that failed and will be retried.',
      labelNames: ['type'],
      registers,
    })
    this.cancellations = new Counter({
      name: 'gpu_worker_cancellations_total',
      help: 'Running jobs cancelled on this host.',
      labelNames: ['type'],
      registers,
    })
    this.timeouts = new Counter({
      name: 'gpu_worker_timeouts_total',
      help: 'Attempts killed by their hard timeout.',
      labelNames: ['type'],
      registers,
    })
    this.reconciled = new Counter({
      name: 'gpu_worker_jobs_reconciled_total',
      help: 'Unfinished jobs whose BullMQ job was gone (Redis data lost), by type and action: requeued (added again from the job row) or failed (reason lost, no attempt left).',
      labelNames: ['type', 'action'],
      registers,
    })
    this.engineAvailable = new Gauge({
      name: 'gpu_worker_engine_available',
      help: '1 when this host runs jobs of this type on this engine, else 0 (every engine of every type).',
      labelNames: ['type', 'engine'],
      registers,
    })
    // By model name: the names handlers ask for (a bounded set in practice), never a job id.
    this.modelCacheHits = new Counter({
      name: 'gpu_worker_model_cache_hits_total',
      help: "ctx.models.ensure calls of this host's jobs that found the model on the models volume (or waited for another fetch).",
      labelNames: ['model'],
      registers,
    })
    this.modelCacheMisses = new Counter({
      name: 'gpu_worker_model_cache_misses_total',
      help: "ctx.models.ensure calls of this host's jobs that fetched the model themselves.",
      labelNames: ['model'],
      registers,
    })
    this.modelFetchedBytes = new Counter({
      name: 'gpu_worker_model_cache_fetched_bytes_total',
      help: "Bytes of models fetched into the models volume by this host's jobs (S3 or a copy from a path).",
      labelNames: ['model'],
      registers,
    })
    new Gauge({
      name: 'gpu_worker_slots',
      help: 'Job slots (GPUs, or GPU_SLOTS without one) on this host.',
      registers,
    })
    this.zeroJobSeries()
  }

  /**
   * Every job series exists from the start (at 0), so rate() and increase() count the first job of each
   * kind too.
   */
  private zeroJobSeries(): void {
    for (const type of JOB_TYPES) {
      for (const status of ['completed', 'failed', 'cancelled', 'retrying']) {
        this.jobsTotal.inc({ type, status }, 0)
        this.jobDuration.zero({ type, status })
      }
      this.queueWait.zero({ type })
      for (const reason of ERROR_REASONS) this.jobErrors.inc({ type, reason }, 0)
      for (const action of RECONCILE_ACTIONS) this.reconciled.inc({ type, action }, 0)
      for (const counter of [this.attempts, this.retries, this.timeouts, this.cancellations])
        counter.inc({ type }, 0)
    }
  }

  /** Counts one lifecycle transition of a job of `type` (the series `decide` names for it). */
  count(type: string, counts: Counts): void {
    if (counts.jobsTotal) this.jobsTotal.inc({ type, status: counts.jobsTotal })
    if (counts.duration)
      this.jobDuration.observe({ type, status: counts.duration.status }, counts.duration.seconds)
    if (counts.jobErrors) this.jobErrors.inc({ type, reason: counts.jobErrors })
    if (counts.retries) this.retries.inc({ type })
    if (counts.timeouts) this.timeouts.inc({ type })
    if (counts.cancellations) this.cancellations.inc({ type })
    if (counts.reconciled) this.reconciled.inc({ type, action: counts.reconciled })
  }

  gpuLabels(slot: Slot): { gpu: string; UUID: string; Hostname: string } {
    return { gpu: String(slot.gpu.index ?? slot.id), UUID: slot.gpu.uuid ?? '', Hostname: this.host }
  }

  initSlots(slots: Slot[]): void {
    ;(this.registry.getSingleMetric('gpu_worker_slots') as Gauge).set(slots.length)
    for (const slot of slots) {
      this.gpuBusy.set(this.gpuLabels(slot), 0)
      this.runningPerGpu.set(this.gpuLabels(slot), 0)
      this.memLeaks.inc(this.gpuLabels(slot), 0)
    }
  }

  /** One series per engine of each type: 1 for those the host has, 0 for the rest. */
  setEngines(all: Record<string, readonly string[]>, have: Record<string, readonly string[]>): void {
    for (const [type, engines] of Object.entries(all))
      for (const engine of engines)
        this.engineAvailable.set({ type, engine }, have[type]?.includes(engine) ? 1 : 0)
  }

  /** One `ctx.models.ensure` outcome a job process reported. */
  modelCache(model: string, outcome: 'hit' | 'miss', bytes: number): void {
    if (outcome === 'hit') this.modelCacheHits.inc({ model })
    else {
      this.modelCacheMisses.inc({ model })
      this.modelFetchedBytes.inc({ model }, bytes)
    }
  }

  setBusy(slot: Slot, busy: boolean): void {
    this.gpuBusy.set(this.gpuLabels(slot), busy ? 1 : 0)
    this.runningPerGpu.set(this.gpuLabels(slot), busy ? 1 : 0)
  }
}
