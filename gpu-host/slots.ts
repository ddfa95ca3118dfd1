/**
 * The host's GPU slots and their warm spares: which slot a job takes, one pre-forked job process per idle
 * slot, and the check that a finished job left no process holding the slot's GPU memory.
 */
import type { Logger } from 'pino'
import { ChildSpawn } from './child-spawn.ts'
import { type GpuReading, pickSlot, readGpuProcesses, type Slot } from './gpus.ts'
import type { HostMetrics } from './metrics.ts'

export class SlotPool {
  slots: Slot[] = []
  /** One warm, unused job process per slot, forked while the slot is idle. */
  private readonly spares = new Map<number, ChildSpawn>()
  private closing = false

  constructor(
    private readonly deps: {
      metrics: HostMetrics
      logger: Logger
      /** Whether nvidia-smi reports GPUs (else the slots are virtual and memory is not checked). */
      gpuChecks: () => boolean
    },
  ) {}

  get size(): number {
    return this.slots.length
  }

  /** Sets the slots found at start and forks a spare for each. */
  init(slots: Slot[]): void {
    this.slots = slots
    this.deps.metrics.initSlots(slots)
    for (const slot of slots) this.refillSpare(slot)
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
      this.deps.logger.warn({ err }, 'could not fork a spare job process')
    }
  }

  /**
   * The slot's warm spare, if it is alive (still starting is fine: it is ahead of a new fork); each spare
   * serves one job.
   */
  takeSpare(slot: Slot): ChildSpawn | undefined {
    const spare = this.spares.get(slot.id)
    this.spares.delete(slot.id)
    if (spare?.alive) return spare
    if (spare) void spare.discard()
    return undefined
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
  async close(): Promise<void> {
    this.closing = true
    await Promise.all([...this.spares.values()].map((spare) => spare.discard()))
    this.spares.clear()
  }
}
