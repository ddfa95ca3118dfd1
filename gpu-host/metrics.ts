import { hostname } from 'node:os'
import { collectDefaultMetrics, type Gauge, Registry } from 'prom-client'
import { ERROR_REASONS } from '../schema/common.ts'
import { type Counts, RECONCILE_ACTIONS } from '../schema/jobs/lifecycle.ts'
import { counter, declareSeries, gauge, histogram } from '../schema/metrics.ts'
import { JOB_TYPES } from '../schema/params/index.ts'
import type { Slot } from './gpus.ts'
import type { DeviceUsage } from './vram-ledger.ts'

const MIB = 1024 * 1024

/** BullMQ job states sampled into `gpu_worker_queue_jobs{state}` (schema/queue.ts). */
export { QUEUE_STATES } from '../schema/queue.ts'

const DURATION_BUCKETS = [1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14_400, 28_800]
const WAIT_BUCKETS = [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600]
const START_BUCKETS = [0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1, 2, 5]

/** What a running job shows the per-type gauges (progress, last progress, count). */
export interface RunningJob {
  type: string
  progress: number
  lastProgressAt: number
}

/** A gauge's collect: one value per job type of the jobs running now, folded by `value`. */
const perRunningType = (running: () => Iterable<RunningJob>, value: (jobs: RunningJob[]) => number) =>
  function collect(this: Gauge<'type'>): void {
    this.reset()
    const byType = new Map<string, RunningJob[]>()
    for (const job of running()) {
      const jobs = byType.get(job.type)
      if (jobs) jobs.push(job)
      else byType.set(job.type, [job])
    }
    for (const [type, jobs] of byType) this.set({ type }, value(jobs))
  }

const meanProgress = (jobs: RunningJob[]): number =>
  jobs.reduce((sum, j) => sum + j.progress, 0) / jobs.length
const oldestProgressAge = (jobs: RunningJob[]): number => {
  const now = Date.now()
  return jobs.reduce((age, j) => Math.max(age, (now - j.lastProgressAt) / 1000), 0)
}

/**
 * dcgm-exporter's labels. A MIG instance's series also carry its `GPU_I_PROFILE` and `GPU_I_ID`, as
 * dcgm-exporter's do, and `gpu_uuid`, its physical GPU's uuid: dcgm-exporter's `UUID` for a MIG
 * instance is the GPU's, ours the instance's own (`MIG-...`, what CUDA_VISIBLE_DEVICES takes), so a join
 * takes `label_replace(ours, "UUID", "$1", "gpu_uuid", "(.+)")` and `on (gpu, UUID, GPU_I_ID)`.
 */
const GPU = ['gpu', 'UUID', 'Hostname', 'GPU_I_PROFILE', 'GPU_I_ID', 'gpu_uuid'] as const

/** Every series of the host, one a line. No job-id labels (unbounded cardinality). */
const hostSeries = (running: () => Iterable<RunningJob>) =>
  // biome-ignore format: a table, one series a line
  ({
    info: gauge('gpu_worker_info', ['version', 'host'], 'Static information about this GPU host (value is always 1).'),
    jobsTotal: counter('gpu_worker_jobs_total', ['type', 'status'], 'Job attempts finished on this host, by job type and outcome (completed, failed, cancelled, retrying).'),
    jobDuration: histogram('gpu_worker_job_duration_seconds', ['type', 'status'], DURATION_BUCKETS, 'Wall time of one job attempt in its subprocess, in seconds, by type and outcome.'),
    jobErrors: counter('gpu_worker_job_errors_total', ['type', 'reason'], 'Failed job attempts, by type and reason (timeout, crash, invalid_params, ...).'),
    progress: gauge('gpu_worker_progress_percent', ['type'], 'Mean progress of the jobs running on this host, in percent, by type.', perRunningType(running, meanProgress)),
    oldestProgressAge: gauge('gpu_worker_oldest_progress_age_seconds', ['type'], 'Longest time since a running job of this type last reported progress, in seconds (0: none running).', perRunningType(running, oldestProgressAge)),
    jobsRunning: gauge('gpu_worker_jobs_running', ['type'], 'Jobs running on this host now, by type.', perRunningType(running, (jobs) => jobs.length)),
    gpuBusy: gauge('gpu_worker_gpu_busy', GPU, '1 while a job runs on this GPU (or virtual slot), else 0.'),
    runningPerGpu: gauge('gpu_worker_running_jobs_per_gpu', GPU, 'Jobs running on this GPU (or MIG instance, or virtual slot) now.'),
    memReserved: gauge('gpu_worker_gpu_memory_reserved_bytes', GPU, "GPU memory this host has reserved for its running jobs on this GPU or MIG instance (each job's gpu.vramMb, or what it uses if more), in bytes."),
    memFree: gauge('gpu_worker_gpu_memory_free_bytes', GPU, 'GPU memory a new job could still get on this GPU or MIG instance: total minus what other processes use minus what this host reserved, in bytes.'),
    memUsed: gauge('gpu_worker_gpu_memory_used_bytes', GPU, 'GPU memory in use as nvidia-smi reports it, in bytes.'),
    memTotal: gauge('gpu_worker_gpu_memory_total_bytes', GPU, 'GPU memory in total as nvidia-smi reports it, in bytes.'),
    memLeaks: counter('gpu_worker_gpu_memory_leaks_total', GPU, 'Times a finished job still had a process holding memory on this GPU.'),
    queueJobs: gauge('gpu_worker_queue_jobs', ['state'], 'Jobs in the BullMQ queue by state, sampled by this host.'),
    oldestWaiting: gauge('gpu_worker_oldest_waiting_job_age_seconds', [], 'Age of the oldest job waiting in the queue, in seconds (0: none waiting).'),
    queueWait: histogram('gpu_worker_queue_wait_seconds', ['type'], WAIT_BUCKETS, 'Time from enqueue to the start of an attempt, in seconds.'),
    subprocessStart: histogram('gpu_worker_subprocess_start_seconds', [], START_BUCKETS, 'Time from fork to the handler starting in the fresh job process, in seconds.'),
    attempts: counter('gpu_worker_attempts_total', ['type'], 'Job attempts started.'),
    retries: counter('gpu_worker_retries_total', ['type'], 'Attempts that failed and will be retried.'),
    cancellations: counter('gpu_worker_cancellations_total', ['type'], 'Running jobs cancelled on this host.'),
    timeouts: counter('gpu_worker_timeouts_total', ['type'], 'Attempts killed by their hard timeout.'),
    reconciled: counter('gpu_worker_jobs_reconciled_total', ['type', 'action'], 'Unfinished jobs whose BullMQ job was gone (Redis data lost), by type and action: requeued (added again from the job row) or failed (reason lost, no attempt left).'),
    engineAvailable: gauge('gpu_worker_engine_available', ['type', 'engine'], '1 when this host runs jobs of this type on this engine, else 0 (every engine of every type).'),
    // By model name: the names handlers ask for (a bounded set in practice), never a job id.
    modelCacheHits: counter('gpu_worker_model_cache_hits_total', ['model'], "ctx.models.ensure calls of this host's jobs that found the model on the models volume (or waited for another fetch)."),
    modelCacheMisses: counter('gpu_worker_model_cache_misses_total', ['model'], "ctx.models.ensure calls of this host's jobs that fetched the model themselves."),
    modelFetchedBytes: counter('gpu_worker_model_cache_fetched_bytes_total', ['model'], "Bytes of models fetched into the models volume by this host's jobs (S3 or a copy from a path)."),
    slots: gauge('gpu_worker_slots', [], 'Job slots (GPUs, or GPU_SLOTS without one) on this host.'),
  })

type HostSeries = ReturnType<typeof declareSeries<ReturnType<typeof hostSeries>>>

/**
 * The GPU host's Prometheus metrics. No job-id labels; GPU series carry `gpu`, `UUID` and `Hostname`
 * like dcgm-exporter's so PromQL can join them.
 */
export class HostMetrics {
  readonly registry = new Registry()
  readonly host = hostname()
  readonly jobsTotal: HostSeries['jobsTotal']
  readonly jobDuration: HostSeries['jobDuration']
  readonly jobErrors: HostSeries['jobErrors']
  readonly progress: HostSeries['progress']
  readonly gpuBusy: HostSeries['gpuBusy']
  readonly runningPerGpu: HostSeries['runningPerGpu']
  readonly jobsRunning: HostSeries['jobsRunning']
  readonly queueJobs: HostSeries['queueJobs']
  readonly oldestWaiting: HostSeries['oldestWaiting']
  readonly queueWait: HostSeries['queueWait']
  readonly subprocessStart: HostSeries['subprocessStart']
  readonly attempts: HostSeries['attempts']
  readonly retries: HostSeries['retries']
  readonly cancellations: HostSeries['cancellations']
  readonly timeouts: HostSeries['timeouts']
  readonly memUsed: HostSeries['memUsed']
  readonly memTotal: HostSeries['memTotal']
  readonly memReserved: HostSeries['memReserved']
  readonly memFree: HostSeries['memFree']
  readonly memLeaks: HostSeries['memLeaks']
  readonly oldestProgressAge: HostSeries['oldestProgressAge']
  readonly reconciled: HostSeries['reconciled']
  readonly engineAvailable: HostSeries['engineAvailable']
  readonly modelCacheHits: HostSeries['modelCacheHits']
  readonly modelCacheMisses: HostSeries['modelCacheMisses']
  readonly modelFetchedBytes: HostSeries['modelFetchedBytes']
  private readonly slots: HostSeries['slots']

  constructor(opts: { version: string; running: () => Iterable<RunningJob> }) {
    collectDefaultMetrics({ register: this.registry })
    const s = declareSeries(this.registry, hostSeries(opts.running))
    s.info.set({ version: opts.version, host: this.host }, 1)
    ;({
      jobsTotal: this.jobsTotal,
      jobDuration: this.jobDuration,
      jobErrors: this.jobErrors,
      progress: this.progress,
      gpuBusy: this.gpuBusy,
      runningPerGpu: this.runningPerGpu,
      jobsRunning: this.jobsRunning,
      queueJobs: this.queueJobs,
      oldestWaiting: this.oldestWaiting,
      queueWait: this.queueWait,
      subprocessStart: this.subprocessStart,
      attempts: this.attempts,
      retries: this.retries,
      cancellations: this.cancellations,
      timeouts: this.timeouts,
      memUsed: this.memUsed,
      memTotal: this.memTotal,
      memReserved: this.memReserved,
      memFree: this.memFree,
      memLeaks: this.memLeaks,
      oldestProgressAge: this.oldestProgressAge,
      reconciled: this.reconciled,
      engineAvailable: this.engineAvailable,
      modelCacheHits: this.modelCacheHits,
      modelCacheMisses: this.modelCacheMisses,
      modelFetchedBytes: this.modelFetchedBytes,
      slots: this.slots,
    } = s)
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

  /**
   * dcgm-exporter's labels; a MIG instance has its GPU's index, its own `MIG-` uuid, and its profile,
   * GPU instance id (when nvidia-smi showed it) and GPU's uuid (see GPU above).
   */
  gpuLabels(slot: Slot): Partial<Record<(typeof GPU)[number], string>> {
    const labels = { gpu: String(slot.gpu.index ?? slot.id), UUID: slot.gpu.uuid ?? '', Hostname: this.host }
    const mig = slot.mig
    if (!mig) return labels
    return {
      ...labels,
      GPU_I_PROFILE: mig.profile,
      ...(mig.gpuInstanceId === undefined ? {} : { GPU_I_ID: String(mig.gpuInstanceId) }),
      gpu_uuid: mig.gpuUuid,
    }
  }

  initSlots(slots: Slot[]): void {
    this.slots.set(slots.length)
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

  /** The slot's jobs and, on a GPU or MIG instance, its reserved and free memory. */
  setUsage(slot: Slot, usage: DeviceUsage): void {
    const labels = this.gpuLabels(slot)
    this.gpuBusy.set(labels, usage.jobs > 0 ? 1 : 0)
    this.runningPerGpu.set(labels, usage.jobs)
    if (usage.freeMb === null) return
    this.memReserved.set(labels, usage.reservedMb * MIB)
    this.memFree.set(labels, usage.freeMb * MIB)
  }
}
