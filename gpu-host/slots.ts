/**
 * The host's GPU slots and their warm spares: which slot a job takes, pre-forked job processes per GPU
 * device (spare-pool.ts), and the check that a finished job left no process holding the slot's GPU memory.
 */
import type { Logger } from 'pino'
import type { ChildSpawn } from './child-spawn.ts'
import { type GpuReading, pickSlot, readGpuProcesses, type Slot } from './gpus.ts'
import type { HostMetrics } from './metrics.ts'
import { SparePool } from './spare-pool.ts'

export class SlotPool {
  slots: Slot[] = []
  /** Warm, unused job processes, kept per device (CUDA_VISIBLE_DEVICES). */
  private readonly spares: SparePool

  constructor(
    private readonly deps: {
      metrics: HostMetrics
      logger: Logger
      /** Whether nvidia-smi reports GPUs (else the slots are virtual and memory is not checked). */
      gpuChecks: () => boolean
      /** Handler modules by path, imported by each spare before a job. */
      preload?: readonly string[]
    },
  ) {
    this.spares = new SparePool({ logger: deps.logger, preload: deps.preload ?? [] })
  }

  get size(): number {
    return this.slots.length
  }

  /** Sets the slots found at start and forks a spare for each. */
  init(slots: Slot[]): void {
    this.slots = slots
    this.deps.metrics.initSlots(slots)
    void this.spares.start(slots.map((s) => s.cudaVisibleDevices))
  }

  /** A slot with `vramMb` free on its GPU now (given `readings`), or how much the best one has. */
  pick(readings: GpuReading[] | null, vramMb: number): ReturnType<typeof pickSlot> {
    return pickSlot(this.slots, readings, vramMb)
  }

  /** Takes `chosen`, or any free slot; the worker's concurrency equals the slot count, so one is free. */
  acquire(chosen?: Slot): Slot {
    const slot = chosen ?? this.slots.find((s) => !s.busy)
    if (!slot || slot.busy) throw new Error('no free GPU slot')
    slot.busy = true
    this.deps.metrics.setBusy(slot, true)
    return slot
  }

  release(slot: Slot): void {
    slot.busy = false
    this.deps.metrics.setBusy(slot, false)
  }

  /** A warm spare for the slot's device, if one is alive; each spare serves one job. */
  takeSpare(slot: Slot): ChildSpawn | undefined {
    return this.spares.take(slot.cudaVisibleDevices)
  }

  /** Processes that still hold memory on the slot's GPU after the job's group is gone: a leak. */
  async checkGpuRelease(slot: Slot, pids: number[]): Promise<void> {
    if (!this.deps.gpuChecks() || !slot.gpu.uuid) return
    const procs = await readGpuProcesses()
    const leaked = procs?.filter((p) => p.gpuUuid === slot.gpu.uuid && pids.includes(p.pid)) ?? []
    if (leaked.length > 0) {
      this.deps.metrics.memLeaks.inc(this.deps.metrics.gpuLabels(slot))
      this.deps.logger.error(
        { gpu: slot.gpu.uuid, leaked },
        'job processes still hold GPU memory after the job ended',
      )
    }
  }

  /** Forks no more spares and ends those waiting. */
  close(): Promise<void> {
    return this.spares.close()
  }
}
