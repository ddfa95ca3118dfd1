/**
 * The host's ledger of GPU memory per device (GPU or MIG instance): its total, what other processes use
 * (from the last reading), and what this host has reserved for the jobs it started. Admission is by the
 * reservations, not by the last reading alone: a reading lags the allocations of a job that has just
 * started, so a job counts for at least its reservation from the moment it is placed. Pure: no I/O.
 */

/** What a job asks of a device: the VRAM it needs and whether it must have the device to itself. */
export interface GpuRequest {
  vramMb: number
  exclusive: boolean
}

/** A device of the ledger; `totalMb` null is a virtual slot (GPU_SLOTS): one job, no memory check. */
export interface LedgerDevice {
  id: number
  totalMb: number | null
}

/** One device as the ledger sees it now (memory in MiB; null on a virtual slot). */
export interface DeviceUsage {
  totalMb: number | null
  /** Memory held by processes that are not this host's jobs (ComfyUI, Ollama), as last read. */
  otherMb: number
  /** What this host holds for its jobs here: each job's reservation, or what it was seen using if more. */
  reservedMb: number
  /** What a new job could still get: total minus other minus reserved (0 at least). */
  freeMb: number | null
  jobs: number
  /** A job runs here that must not share the device. */
  exclusive: boolean
}

/** Where a job goes: a device now, later (something must be released first), or never on this host. */
export type Placement = { device: number } | { wait: true } | { never: true; largestMb: number }

interface Held extends GpuRequest {
  device: number
  /** What the job's processes were last seen using (0 until a reading shows them). */
  measuredMb: number
}

/**
 * @example
 * const ledger = new VramLedger([{ id: 0, totalMb: 143_771 }], 4)
 * const p = ledger.place({ vramMb: 8_000, exclusive: false }) // { device: 0 }
 * if ('device' in p) ledger.reserve('job-1', p.device, { vramMb: 8_000, exclusive: false })
 * ledger.release('job-1')
 */
export class VramLedger {
  private readonly devices: Map<number, { totalMb: number | null; otherMb: number }>
  private readonly held = new Map<string, Held>()

  constructor(
    devices: LedgerDevice[],
    /** MAX_JOBS_PER_GPU: jobs at once on one GPU or MIG instance (a virtual slot takes one). */
    private readonly maxJobsPerDevice: number,
  ) {
    this.devices = new Map(devices.map((d) => [d.id, { totalMb: d.totalMb, otherMb: 0 }]))
  }

  /**
   * Takes a reading of `device`: `usedMb` in all, of which `measured` (by job id) is this host's jobs'
   * processes. The rest is another process's: also the memory of a job released already (its process
   * group gone) that a late reading still shows, so the ledger errs towards too little room.
   */
  observe(device: number, usedMb: number, measured: ReadonlyMap<string, number> = new Map()): void {
    const d = this.devices.get(device)
    if (!d) return
    let ours = 0
    for (const [jobId, job] of this.held) {
      if (job.device !== device) continue
      job.measuredMb = measured.get(jobId) ?? 0
      ours += job.measuredMb
    }
    d.otherMb = Math.max(0, usedMb - ours)
  }

  usage(device: number): DeviceUsage {
    const d = this.devices.get(device)
    if (!d) throw new Error(`no device ${device}`)
    let reservedMb = 0
    let jobs = 0
    let exclusive = false
    for (const job of this.held.values()) {
      if (job.device !== device) continue
      // A job over its reservation holds what it uses.
      reservedMb += Math.max(job.vramMb, job.measuredMb)
      jobs++
      exclusive ||= job.exclusive
    }
    const freeMb = d.totalMb === null ? null : Math.max(0, d.totalMb - d.otherMb - reservedMb)
    return { totalMb: d.totalMb, otherMb: d.otherMb, reservedMb, freeMb, jobs, exclusive }
  }

  private cap(device: number): number {
    return this.devices.get(device)?.totalMb === null ? 1 : this.maxJobsPerDevice
  }

  private fits(device: number, req: GpuRequest): boolean {
    const u = this.usage(device)
    if (u.jobs >= this.cap(device) || u.exclusive || (req.exclusive && u.jobs > 0)) return false
    return u.freeMb === null || u.freeMb >= req.vramMb
  }

  /** Whether the device could take the job once everything on it is released. */
  private couldFit(device: number, req: GpuRequest): boolean {
    const total = this.devices.get(device)?.totalMb
    return total === null || (total ?? 0) - (this.devices.get(device)?.otherMb ?? 0) >= req.vramMb
  }

  /**
   * Where `req` can start now: the fitting device with the most free memory (jobs spread over GPUs), the
   * lowest id first on a tie; `avoid` is left out (a device held back for a job that waits longer).
   * `never` when no device of this host is large enough, however much is released.
   */
  place(req: GpuRequest, avoid?: number): Placement {
    let best: { device: number; freeMb: number } | undefined
    for (const id of this.devices.keys()) {
      if (id === avoid || !this.fits(id, req)) continue
      const freeMb = this.usage(id).freeMb ?? Number.POSITIVE_INFINITY
      if (!best || freeMb > best.freeMb) best = { device: id, freeMb }
    }
    if (best) return { device: best.device }
    const totals = [...this.devices.values()].map((d) => d.totalMb)
    if (totals.some((t) => t === null || t >= req.vramMb)) return { wait: true }
    return { never: true, largestMb: Math.max(0, ...totals.map((t) => t ?? 0)) }
  }

  /**
   * The device a waiting job is held back for, so that jobs that come after it cannot keep taking the
   * room it waits for: of those that could take it at all (by total minus other processes'), the one
   * nearest to it (fewest jobs for an exclusive job, else the most free memory).
   */
  heldBackFor(req: GpuRequest): number | undefined {
    let best: { device: number; key: [number, number] } | undefined
    for (const id of this.devices.keys()) {
      if (!this.couldFit(id, req)) continue
      const u = this.usage(id)
      const free = u.freeMb ?? Number.POSITIVE_INFINITY
      const key: [number, number] = req.exclusive ? [-u.jobs, free] : [free, -u.jobs]
      if (!best || key[0] > best.key[0] || (key[0] === best.key[0] && key[1] > best.key[1]))
        best = { device: id, key }
    }
    return best?.device
  }

  /** Sets `req` aside on `device` for `jobId` (placed by `place`, with no await in between). */
  reserve(jobId: string, device: number, req: GpuRequest): void {
    if (!this.devices.has(device)) throw new Error(`no device ${device}`)
    if (this.held.has(jobId)) throw new Error(`job ${jobId} holds a reservation already`)
    this.held.set(jobId, { ...req, device, measuredMb: 0 })
  }

  /** Gives back `jobId`'s reservation (once its process group is gone); false if it held none. */
  release(jobId: string): boolean {
    return this.held.delete(jobId)
  }

  /** The jobs holding a reservation on `device`. */
  jobsOn(device: number): string[] {
    return [...this.held].filter(([, h]) => h.device === device).map(([jobId]) => jobId)
  }

  /** `jobId`'s reservation, if it holds one. */
  reservation(jobId: string): (GpuRequest & { device: number }) | undefined {
    const h = this.held.get(jobId)
    return h && { vramMb: h.vramMb, exclusive: h.exclusive, device: h.device }
  }
}
