/**
 * Warm spare job processes, kept per GPU device (the CUDA_VISIBLE_DEVICES value a job runs with;
 * undefined for the host's own), enough for a burst: as many as the device has slots, plus one so a job
 * that arrives as the last ended finds one ready while the replacement boots. Each spare has imported
 * every handler (and the host-named handler modules) before 'ready', has run nothing and holds no CUDA
 * context, so it is as fresh as a new fork. A taken spare is replaced at once.
 */
import os from 'node:os'
import type { Logger } from 'pino'
import { ChildSpawn, prepareChildEntry, prepareHandlerModules } from './child-spawn.ts'

/** About what one idle spare holds (RSS of the bundled child); bounds the pool to a tenth of free memory. */
const SPARE_RSS_BYTES = 80 * 1024 * 1024
const MAX_SPARES = 64

type Device = string | undefined

/** Spares per device: SPARE_PROCESSES (config.ts checks it) when set, else its slots + 1. */
export const sparesPerDevice = (configured: number | undefined, slotsOnDevice: number): number =>
  Math.min(MAX_SPARES, configured ?? slotsOnDevice + 1)

export class SparePool {
  private readonly spares = new Map<Device, ChildSpawn[]>()
  private readonly targets = new Map<Device, number>()
  private started = false
  private closing = false
  private refill: NodeJS.Immediate | undefined

  constructor(
    private readonly deps: {
      logger: Logger
      /** Handler modules by path (the host's `handlerModules`), imported by each spare before 'ready'. */
      preload?: readonly string[]
      /** SPARE_PROCESSES. */
      perDevice?: number | undefined
    },
  ) {}

  /**
   * Sets how many spares each device keeps (one entry of `devices` per slot) and fills the pool once the
   * compiled child is ready (until then a job forks its own process).
   */
  start(devices: readonly Device[]): Promise<void> {
    const slots = new Map<Device, number>()
    for (const d of devices) slots.set(d, (slots.get(d) ?? 0) + 1)
    const budget = Math.max(
      slots.size,
      Math.min(MAX_SPARES, Math.floor((os.freemem() * 0.1) / SPARE_RSS_BYTES)),
    )
    let total = 0
    for (const [device, n] of slots) {
      const want = sparesPerDevice(this.deps.perDevice, n)
      total += want
      this.targets.set(device, want)
    }
    // Over the memory budget: every device keeps its share, at least one.
    if (total > budget)
      for (const [device, want] of this.targets)
        this.targets.set(device, Math.min(want, Math.max(1, Math.floor((want * budget) / total))))
    this.started = true
    return Promise.all([
      prepareChildEntry((err) =>
        this.deps.logger.warn({ err }, 'could not bundle the job process; it starts from source under tsx'),
      ),
      prepareHandlerModules(this.deps.preload ?? [], (err) =>
        this.deps.logger.warn({ err }, 'could not compile a handler module; it loads from source under tsx'),
      ),
    ]).then(() => this.fill())
  }

  /** How many spares each device is to keep. */
  target(device: Device): number {
    return this.targets.get(device) ?? 0
  }

  /** Spares of `device` alive now (ready or still starting). */
  count(device: Device): number {
    return (this.spares.get(device) ?? []).filter((s) => s.alive).length
  }

  /** Forks spares until each device has its target, alive. */
  fill(): void {
    if (this.closing || !this.started) return
    for (const [device, want] of this.targets) {
      const list = (this.spares.get(device) ?? []).filter((s) => s.alive)
      this.spares.set(device, list)
      while (list.length < want) {
        try {
          list.push(this.fork(device))
        } catch (err) {
          this.deps.logger.warn({ err }, 'could not fork a spare job process')
          break
        }
      }
    }
  }

  private fork(device: Device): ChildSpawn {
    const spare = new ChildSpawn(device, undefined, this.deps.preload)
    spare.child.once('exit', () => {
      const list = this.spares.get(device)
      const i = list?.indexOf(spare) ?? -1
      if (list && i >= 0) list.splice(i, 1)
    })
    // Its output before a job adopts it is only Node.js start-up noise.
    spare.child.stdout?.resume()
    spare.child.stderr?.resume()
    return spare
  }

  /**
   * A spare for a job on `device`: a ready one first, else the one started earliest (still ahead of a new
   * fork); undefined when there is none. Each spare serves one job, and is replaced at once.
   */
  take(device: Device): ChildSpawn | undefined {
    const list = this.spares.get(device) ?? []
    const alive = list.filter((s) => s.alive)
    const spare = alive.find((s) => s.ready) ?? alive[0]
    if (spare) list.splice(list.indexOf(spare), 1)
    // The replacement is forked after the job has its process: fork() blocks the host for some
    // milliseconds, which the job's start would otherwise wait for.
    this.refill ??= setImmediate(() => {
      this.refill = undefined
      this.fill()
    })
    return spare
  }

  /** Forks no more spares and ends those waiting. */
  async close(): Promise<void> {
    this.closing = true
    if (this.refill) clearImmediate(this.refill)
    const all = [...this.spares.values()].flat()
    this.spares.clear()
    await Promise.all(all.map((spare) => spare.discard()))
  }
}
