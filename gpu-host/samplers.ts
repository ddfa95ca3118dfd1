/**
 * The host's periodic readings into its metrics: the queue (jobs by state, the oldest waiting job's age)
 * and the GPUs (memory used and total per slot, as nvidia-smi reports it; the latest reading is kept for
 * the heartbeat), also read into the admission ledger (what other processes use).
 */
import type { Queue } from 'bullmq'
import type { Logger } from 'pino'
import { oldestWaitingAt } from '../schema/queue.ts'
import { type GpuReading, readGpus, type Slot } from './gpus.ts'
import { type HostMetrics, QUEUE_STATES } from './metrics.ts'

const SAMPLE_INTERVAL_MS = 5000

export class Samplers {
  private timers: NodeJS.Timeout[] = []
  /** The GPUs as last read (empty without nvidia-smi). */
  gpus: GpuReading[] = []

  constructor(
    private readonly deps: {
      metrics: HostMetrics
      logger: Logger
      slots: () => Slot[]
      gpuChecks: () => boolean
      /** Reads what other processes use into the admission ledger (slots.ts), for the gauges and beats. */
      refreshLedger: () => Promise<void>
    },
  ) {}

  /** Samples every 5 s from now on (the timers never keep the process alive). */
  start(queue: Queue): void {
    this.timers.push(
      setInterval(() => void this.sampleQueue(queue), SAMPLE_INTERVAL_MS),
      setInterval(() => void this.sampleGpus(), SAMPLE_INTERVAL_MS),
    )
    for (const t of this.timers) t.unref()
  }

  stop(): void {
    for (const t of this.timers) clearInterval(t)
    this.timers = []
  }

  async sampleQueue(queue: Queue): Promise<void> {
    const { metrics } = this.deps
    try {
      const counts = await queue.getJobCounts(...QUEUE_STATES)
      for (const state of QUEUE_STATES) metrics.queueJobs.set({ state }, counts[state] ?? 0)
      const oldest = (await oldestWaitingAt(queue)) ?? Date.now()
      metrics.oldestWaiting.set((Date.now() - oldest) / 1000)
    } catch (err) {
      this.deps.logger.debug({ err }, 'queue sample failed')
    }
  }

  async sampleGpus(): Promise<void> {
    if (!this.deps.gpuChecks()) return
    const { metrics } = this.deps
    const [gpus] = await Promise.all([
      readGpus(),
      this.deps
        .refreshLedger()
        .catch((err: unknown) => this.deps.logger.debug({ err }, 'ledger refresh failed')),
    ])
    if (gpus) this.gpus = gpus
    for (const slot of this.deps.slots()) {
      // nvidia-smi's CSV reads whole GPUs: a MIG instance shows its own size only.
      if (slot.mig && slot.gpu.vramTotalMb !== null)
        metrics.memTotal.set(metrics.gpuLabels(slot), slot.gpu.vramTotalMb * 1024 * 1024)
      const g = gpus?.find((x) => x.uuid === slot.gpu.uuid)
      if (!g) continue
      metrics.memUsed.set(metrics.gpuLabels(slot), g.memoryUsedMb * 1024 * 1024)
      metrics.memTotal.set(metrics.gpuLabels(slot), g.memoryTotalMb * 1024 * 1024)
    }
  }
}
