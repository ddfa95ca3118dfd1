/**
 * The host's heartbeat: every few seconds its state (slots, GPUs, engines, running jobs) as one JSON key
 * in Redis with a TTL, and its id in the prefix's set of hosts, for `GET /api/hosts`. A clean stop removes
 * both; a host that dies leaves its key to expire, so the gateway shows it gone for a while first.
 */
import type { Redis } from 'ioredis'
import { type HostHeartbeat, KEEP_BEATS } from '../schema/hosts.ts'
import { hostKey, hostsKey } from '../schema/keys.ts'
import type { RunningJob } from './attempt.ts'
import type { HostEngines } from './engines.ts'
import { type GpuReading, physicalUuid, type Slot } from './gpus.ts'
import type { DeviceUsage } from './vram-ledger.ts'

/** Default beat: every 5 s (the key lives KEEP_BEATS intervals: 60 s). */
export const HEARTBEAT_INTERVAL_MS = 5_000

/** What a beat reads from the host, at each beat. */
export interface HeartbeatSource {
  hostId: string
  version: string
  /** When the host started (ms). */
  startedAt: number
  closing(): boolean
  slots(): Slot[]
  /** A slot's jobs and memory as the admission ledger has them. */
  usage(slot: Slot): DeviceUsage
  /** The GPUs as last read (empty without nvidia-smi). */
  gpus(): GpuReading[]
  engines(): HostEngines
  jobs(): Iterable<RunningJob>
}

const iso = (ms: number | undefined): string | null => (ms === undefined ? null : new Date(ms).toISOString())

/**
 * The beat's body now.
 *
 * @example heartbeatBody(source, 5000, Date.now()).slots // { total: 2, busy: 1, free: 1, list: [...] }
 */
export function heartbeatBody(src: HeartbeatSource, intervalMs: number, now: number): HostHeartbeat {
  const slots = src.slots()
  const jobs = [...src.jobs()]
  const busy = slots.filter((s) => s.busy).length
  const usage = new Map(slots.map((s) => [s.id, src.usage(s)]))
  const use = (s: Slot): DeviceUsage => usage.get(s.id) ?? src.usage(s)
  const sum = (of: Slot[], pick: (u: DeviceUsage) => number) => of.reduce((n, s) => n + pick(use(s)), 0)
  return {
    hostId: src.hostId,
    version: src.version,
    pid: process.pid,
    startedAt: new Date(src.startedAt).toISOString(),
    lastSeen: new Date(now).toISOString(),
    intervalMs,
    closing: src.closing(),
    slots: {
      total: slots.length,
      busy,
      free: slots.length - busy,
      list: slots.map((s) => ({
        id: s.id,
        gpu:
          s.gpu.index === null
            ? null
            : { index: s.gpu.index, uuid: s.gpu.uuid ?? '', name: s.gpu.name ?? '' },
        busy: s.busy,
        jobs: use(s).jobs,
        memoryReservedMb: use(s).reservedMb,
        memoryFreeMb: use(s).freeMb,
        ...(s.mig ? { mig: s.mig } : {}),
      })),
    },
    gpus: src.gpus().map((g) => {
      const on = slots.filter((s) => physicalUuid(s) === g.uuid)
      const mig = on.filter((s) => s.mig)
      return {
        index: g.index,
        uuid: g.uuid,
        name: g.name,
        memoryUsedMb: g.memoryUsedMb,
        memoryReservedMb: sum(on, (u) => u.reservedMb),
        memoryTotalMb: g.memoryTotalMb,
        utilizationPct: g.utilizationPct,
        memoryFreeMb: sum(on, (u) => u.freeMb ?? 0),
        jobs: sum(on, (u) => u.jobs),
        ...(mig.length > 0
          ? {
              mig: mig.map((s) => ({
                uuid: s.gpu.uuid ?? '',
                profile: s.mig?.profile ?? '',
                device: s.mig?.device ?? 0,
                memoryTotalMb: s.gpu.vramTotalMb ?? 0,
                memoryReservedMb: use(s).reservedMb,
                memoryFreeMb: use(s).freeMb ?? 0,
                jobs: use(s).jobs,
              })),
            }
          : {}),
      }
    }),
    engines: src.engines(),
    jobs: jobs.map((j) => ({
      jobId: j.jobId,
      type: j.type,
      attempt: j.attempt ?? null,
      startedAt: iso(j.startedAt),
      progress: j.reporter?.progress ?? 0,
      slot: j.slot ?? null,
    })),
  }
}

/**
 * Beats every `intervalMs` from `start()` to `stop()`; the first failed beat of an outage is reported and
 * the next one tries again (the timer never keeps the process alive).
 *
 * @example const hb = new Heartbeat(redis, config.queuePrefix, source); hb.start(); ...; await hb.stop()
 */
export class Heartbeat {
  private timer: NodeJS.Timeout | undefined
  private beating: Promise<void> | undefined
  private readonly intervalMs: number
  private readonly onError: (err: unknown) => void
  private failing = false
  /** Whether it ever beat: only then has a clean stop anything to remove. */
  private beaten = false

  constructor(
    private readonly redis: Redis,
    private readonly queuePrefix: string,
    private readonly source: HeartbeatSource,
    opts: { intervalMs?: number | undefined; onError?: (err: unknown) => void } = {},
  ) {
    this.intervalMs = opts.intervalMs ?? HEARTBEAT_INTERVAL_MS
    this.onError = opts.onError ?? (() => {})
  }

  /** Writes one beat now (a beat still in flight is not doubled). */
  beat(): Promise<void> {
    this.beaten = true
    this.beating ??= this.write().finally(() => {
      this.beating = undefined
    })
    return this.beating
  }

  private async write(): Promise<void> {
    const now = Date.now()
    const ttlMs = KEEP_BEATS * this.intervalMs
    const body = heartbeatBody(this.source, this.intervalMs, now)
    const set = hostsKey(this.queuePrefix)
    // Scored by when the key expires, each host by its own TTL, so any beat can drop the expired ones (and
    // a set left empty by clean stops is gone with its last member).
    await this.redis
      .multi()
      .set(hostKey(this.queuePrefix, this.source.hostId), JSON.stringify(body), 'PX', ttlMs)
      .zadd(set, now + ttlMs, this.source.hostId)
      .zremrangebyscore(set, '-inf', now)
      .exec()
  }

  /** Beats now and every interval from now on. */
  start(): void {
    if (this.timer) return
    // One report per outage, not one per beat.
    const tick = () =>
      void this.beat().then(
        () => {
          this.failing = false
        },
        (err: unknown) => {
          if (!this.failing) this.onError(err)
          this.failing = true
        },
      )
    tick()
    this.timer = setInterval(tick, this.intervalMs)
    this.timer.unref()
  }

  /** Whether it beats (between `start()` and `stop()`). */
  get running(): boolean {
    return this.timer !== undefined
  }

  /**
   * Stops beating; `remove` (a clean stop) deletes the host's key and its entry at once, else (a test that
   * plays a dead host) they are left to expire. Nothing to do if it never beat.
   */
  async stop({ remove = true }: { remove?: boolean } = {}): Promise<void> {
    clearInterval(this.timer)
    this.timer = undefined
    await this.beating?.catch(() => {})
    if (!remove || !this.beaten) return
    await this.redis
      .multi()
      .del(hostKey(this.queuePrefix, this.source.hostId))
      .zrem(hostsKey(this.queuePrefix), this.source.hostId)
      .exec()
  }
}
