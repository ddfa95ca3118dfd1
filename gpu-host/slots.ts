/**
 * The host's devices (GPUs, MIG instances, or virtual slots) and what runs on them: admission by VRAM
 * through the ledger (vram-ledger.ts), kept up to date from nvidia-smi; warm spare job processes per
 * device (spare-pool.ts); the check that a finished job left no process holding the device's memory.
 *
 * A job that fits nowhere yet is held by the host (its BullMQ job stays active, locked and unattempted)
 * until a release makes room: it is then the first to get it, and the device it waits for is held back
 * from the jobs after it, so it never starves. The host holds one such job at a time; any other job that
 * does not fit goes back to the queue (delayed, no attempt counted) for another host or for later.
 */
import type { Logger } from 'pino'
import type { ChildSpawn } from './child-spawn.ts'
import { physicalUuid, readGpuProcesses, readGpus, type Slot } from './gpus.ts'
import type { HostMetrics } from './metrics.ts'
import { groupMembers } from './process-group.ts'
import { SparePool } from './spare-pool.ts'
import { type DeviceUsage, type GpuRequest, VramLedger } from './vram-ledger.ts'

/** How often a job waiting for room looks at nvidia-smi again (other processes free memory unannounced). */
const RECHECK_MS = 1_000
/**
 * A reading this recent is good enough to admit by: nvidia-smi takes tens of milliseconds a call, which
 * every job's start would otherwise wait for, and any reading lags what other processes allocate anyway
 * (which is why admission counts reservations, not the reading alone).
 */
const READING_FRESH_MS = 1_000
/** Jobs put back while another waited for room, kept to be called back when room may have come. */
const MAX_CALLBACKS = 1_000

/** What became of a job's admission. */
export type Admission =
  /** Placed and reserved: release it with `release`. */
  | { slot: Slot }
  /** No device of this host is large enough. */
  | { never: true; largestMb: number }
  /** It does not fit now and the host already holds a job waiting for room. */
  | { busy: true }
  /** Given up while waiting (`stop()` said so: a cancel or a shutdown). */
  | { stopped: true }

export class SlotPool {
  slots: Slot[] = []
  private ledger = new VramLedger([], 1)
  /** Warm, unused job processes, kept per device (CUDA_VISIBLE_DEVICES). */
  private readonly spares: SparePool
  /** Process group of each placed job's process, to tell its GPU memory from other processes'. */
  private readonly groups = new Map<string, number>()
  /** The job held waiting for room, and the device held back for it. */
  private waiter: { wake: () => void; heldBack: number | undefined } | undefined
  /** Calls back for jobs put back while another waited (`whenRoom`), first first. */
  private readonly callbacks: (() => void)[] = []
  /** The nvidia-smi reading under way, and when the last one was taken (ms). */
  private reading: Promise<void> | undefined
  private readAt = 0

  constructor(
    private readonly deps: {
      metrics: HostMetrics
      logger: Logger
      /** Whether nvidia-smi reports GPUs (else the slots are virtual and memory is not checked). */
      gpuChecks: () => boolean
      /** MAX_JOBS_PER_GPU. */
      maxJobsPerGpu: number
      /** Handler modules by path, imported by each spare before a job. */
      preload?: readonly string[]
      /** SPARE_PROCESSES. */
      sparesPerDevice?: number | undefined
    },
  ) {
    this.spares = new SparePool({
      logger: deps.logger,
      preload: deps.preload ?? [],
      perDevice: deps.sparesPerDevice,
    })
  }

  get size(): number {
    return this.slots.length
  }

  /** How many jobs may run at once: the worker's concurrency. */
  get capacity(): number {
    return this.slots.reduce((n, s) => n + (s.gpu.vramTotalMb === null ? 1 : this.deps.maxJobsPerGpu), 0)
  }

  /** Sets the slots found at start and forks a spare for each. */
  init(slots: Slot[]): void {
    this.slots = slots
    this.ledger = new VramLedger(
      slots.map((s) => ({ id: s.id, totalMb: s.gpu.vramTotalMb })),
      this.deps.maxJobsPerGpu,
    )
    this.deps.metrics.initSlots(slots)
    for (const slot of slots) this.deps.metrics.setUsage(slot, this.usage(slot))
    // Spares for as many jobs as each device may run at once (a virtual slot runs one).
    const capacity = (s: Slot) => (s.gpu.index === null ? 1 : this.deps.maxJobsPerGpu)
    void this.spares.start(
      slots.flatMap((s) => Array<string | undefined>(capacity(s)).fill(s.cudaVisibleDevices)),
    )
  }

  /** The slot's memory and jobs as the ledger has them now. */
  usage(slot: Slot): DeviceUsage {
    return this.ledger.usage(slot.id)
  }

  /**
   * Places `jobId` on a device with room for `req` and reserves it there, waiting (woken by releases,
   * re-reading nvidia-smi every second) while nothing fits, unless another job waits already.
   */
  async admit(jobId: string, req: GpuRequest, stop: () => boolean): Promise<Admission> {
    await this.refresh(READING_FRESH_MS)
    const now = this.tryPlace(jobId, req, this.waiter?.heldBack)
    if (now) return now
    if (this.waiter) return { busy: true }
    const waiter: NonNullable<SlotPool['waiter']> = { wake: () => {}, heldBack: undefined }
    this.waiter = waiter
    try {
      for (;;) {
        waiter.heldBack = this.ledger.heldBackFor(req)
        await new Promise<void>((resolve) => {
          const timer = setTimeout(resolve, RECHECK_MS)
          waiter.wake = () => {
            clearTimeout(timer)
            resolve()
          }
        })
        if (stop()) return { stopped: true }
        // Woken by a release, the room it gave back is known without a reading (its process group is
        // gone); the reading is for what other processes freed meanwhile.
        const known = this.tryPlace(jobId, req)
        if (known) return known
        await this.refresh()
        const placed = this.tryPlace(jobId, req)
        if (placed) return placed
      }
    } finally {
      this.waiter = undefined
      this.callBack()
    }
  }

  /**
   * `retry` is called once, when room may have come and no job waits for it: a job put back (delayed)
   * because another waited for room comes back then, not at the end of its delay.
   */
  whenRoom(retry: () => void): void {
    this.callbacks.push(retry)
    if (this.callbacks.length > MAX_CALLBACKS) this.callbacks.shift()
    if (!this.waiter) this.callBack()
  }

  private callBack(): void {
    if (this.waiter) return
    this.callbacks.shift()?.()
  }

  /** Wakes the job waiting for room, to look again now (a cancel, a shutdown). */
  wake(): void {
    this.waiter?.wake()
  }

  /** Synchronous from `place` to `reserve`: two admissions cannot take the same room. */
  private tryPlace(jobId: string, req: GpuRequest, avoid?: number): Admission | undefined {
    const placed = this.ledger.place(req, avoid)
    if ('never' in placed) return placed
    if ('wait' in placed) return undefined
    const slot = this.slots[placed.device]
    if (!slot) throw new Error(`no slot ${placed.device}`)
    this.ledger.reserve(jobId, slot.id, req)
    this.updated(slot)
    return { slot }
  }

  /** Notes the process group of `jobId`'s process, whose GPU memory is then the job's own. */
  setGroup(jobId: string, pgid: number): void {
    this.groups.set(jobId, pgid)
  }

  /**
   * Gives back `jobId`'s reservation on `slot`, once its process group is gone (a process that outlived
   * SIGKILL shows in the next reading as another process's memory, so its room is not handed out).
   */
  release(jobId: string, slot: Slot): void {
    this.ledger.release(jobId)
    this.groups.delete(jobId)
    this.updated(slot)
    if (this.waiter) this.waiter.wake()
    else this.callBack()
  }

  private updated(slot: Slot): void {
    const usage = this.usage(slot)
    slot.jobs = usage.jobs
    slot.busy = usage.jobs > 0
    this.deps.metrics.setUsage(slot, usage)
  }

  /**
   * Reads nvidia-smi into the ledger: per GPU, memory used, of which this host's job processes hold
   * what `--query-compute-apps` lists for their process groups (in a container without the host's pid
   * namespace none match, and the ledger errs towards too little room). A MIG instance has no reading
   * of its own in nvidia-smi's CSV: it is admitted by its size and this host's reservations.
   */
  refresh(maxAgeMs = 0): Promise<void> {
    if (!this.deps.gpuChecks()) return Promise.resolve()
    // Callers at the same moment share one reading (a burst of jobs runs nvidia-smi once, not per job).
    if (this.reading !== undefined) return this.reading
    if (Date.now() - this.readAt < maxAgeMs) return Promise.resolve()
    this.reading = this.read().finally(() => {
      this.reading = undefined
    })
    return this.reading
  }

  private async read(): Promise<void> {
    const [gpus, procs] = await Promise.all([readGpus(), readGpuProcesses()])
    if (!gpus) return
    const pidsOf = new Map<string, number[]>()
    await Promise.all(
      [...this.groups].map(async ([jobId, pgid]) => {
        pidsOf.set(jobId, (await groupMembers(pgid)) ?? [pgid])
      }),
    )
    for (const slot of this.slots) {
      if (slot.mig) continue
      const g = gpus.find((r) => r.uuid === slot.gpu.uuid)
      if (!g) continue
      const measured = new Map<string, number>()
      for (const jobId of this.ledger.jobsOn(slot.id)) {
        const pids = pidsOf.get(jobId) ?? []
        const mb = (procs ?? [])
          .filter((p) => p.gpuUuid === g.uuid && pids.includes(p.pid))
          .reduce((sum, p) => sum + p.usedMb, 0)
        measured.set(jobId, mb)
      }
      this.ledger.observe(slot.id, g.memoryUsedMb, measured)
      this.deps.metrics.setUsage(slot, this.usage(slot))
    }
    this.readAt = Date.now()
  }

  /** A warm spare for the slot's device, if one is alive; each spare serves one job. */
  takeSpare(slot: Slot): ChildSpawn | undefined {
    return this.spares.take(slot.cudaVisibleDevices)
  }

  /** Processes that still hold memory on the slot's GPU after the job's group is gone: a leak. */
  async checkGpuRelease(slot: Slot, pids: number[]): Promise<void> {
    const gpuUuid = physicalUuid(slot)
    if (!this.deps.gpuChecks() || !gpuUuid) return
    const procs = await readGpuProcesses()
    const leaked = procs?.filter((p) => p.gpuUuid === gpuUuid && pids.includes(p.pid)) ?? []
    if (leaked.length > 0) {
      this.deps.metrics.memLeaks.inc(this.deps.metrics.gpuLabels(slot))
      this.deps.logger.error(
        { gpu: gpuUuid, leaked },
        'job processes still hold GPU memory after the job ended',
      )
    }
  }

  /** Forks no more spares and ends those waiting. */
  async close(): Promise<void> {
    this.waiter?.wake()
    await this.spares.close()
  }
}
