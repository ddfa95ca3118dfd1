/**
 * A GPU host's heartbeat: the state each host writes to Redis every few seconds (gpu-host/heartbeat.ts)
 * and the gateway reads, checks and serves as `GET /api/hosts` (gateway/routes/hosts.ts).
 */
import type { Redis } from 'ioredis'
import * as v from 'valibot'
import { ENGINES, type Engine } from './engines.ts'
import { hostKey, hostsKey } from './keys.ts'
import { JOB_TYPES, JobType } from './params/index.ts'

const count = v.pipe(v.number(), v.integer(), v.minValue(0))
const iso = v.pipe(v.string(), v.isoTimestamp())

/** A MIG instance of a GPU: a device of its own with its own memory (`CUDA_VISIBLE_DEVICES=MIG-<uuid>`). */
export const HostMigInstance = v.object({
  uuid: v.string(),
  /** The profile, e.g. `1g.18gb`. */
  profile: v.string(),
  /** Its device number under the GPU (`nvidia-smi -L`). */
  device: count,
  memoryTotalMb: v.number(),
  memoryReservedMb: v.number(),
  memoryFreeMb: v.number(),
  jobs: count,
})
export type HostMigInstance = v.InferOutput<typeof HostMigInstance>

/**
 * One GPU as the host last read it (nvidia-smi); memory in MiB. The fields after `utilizationPct` came
 * with VRAM packing and are absent from older hosts' beats.
 */
export const HostGpu = v.object({
  index: count,
  uuid: v.string(),
  name: v.string(),
  memoryUsedMb: v.number(),
  /** What this host has set aside for the jobs it runs on this GPU (their `gpu.vramMb`). */
  memoryReservedMb: v.number(),
  memoryTotalMb: v.number(),
  /** Null when nvidia-smi does not report it. */
  utilizationPct: v.nullable(v.number()),
  /** What a new job could still get: total minus other processes' use minus reserved (MIG: the instances'). */
  memoryFreeMb: v.optional(v.number()),
  /** Jobs of this host running on it now (on all its MIG instances). */
  jobs: v.optional(count),
  /** Its MIG instances, where MIG is on: each takes jobs of its own. */
  mig: v.optional(v.array(HostMigInstance)),
})
export type HostGpu = v.InferOutput<typeof HostGpu>

/**
 * One slot: a device jobs are placed on: a GPU, a MIG instance (`mig`; `gpu.uuid` is the instance's), or a
 * virtual slot (GPU_SLOTS, no GPU: `gpu` null). Several jobs may share a GPU or MIG instance.
 */
export const HostSlot = v.object({
  id: count,
  gpu: v.nullable(v.object({ index: count, uuid: v.string(), name: v.string() })),
  /** At least one job runs on it. */
  busy: v.boolean(),
  /** Jobs running on it now. */
  jobs: v.optional(count),
  /** Memory reserved for them, and what a new job could still get (null: a virtual slot). */
  memoryReservedMb: v.optional(v.number()),
  memoryFreeMb: v.optional(v.nullable(v.number())),
  mig: v.optional(v.object({ profile: v.string(), device: count, gpuUuid: v.string() })),
})
export type HostSlot = v.InferOutput<typeof HostSlot>

/**
 * A job the host runs now. In `GET /api/hosts` with API tokens, another owner's job is left out: its slot
 * says busy (the fleet's load is everyone's business), the job is not.
 */
export const HostJob = v.object({
  jobId: v.string(),
  type: JobType,
  /** Null until the attempt is recorded as started (the job waits for its engine or GPU memory). */
  attempt: v.nullable(count),
  startedAt: v.nullable(iso),
  progress: v.number(),
  /** The slot it runs on, once it has one. */
  slot: v.nullable(count),
})
export type HostJob = v.InferOutput<typeof HostJob>

/** Per job type, the engines the host has (`simulate` always). */
export const HostEngines = v.object(
  Object.fromEntries(JOB_TYPES.map((t) => [t, v.array(v.picklist(ENGINES[t] as readonly Engine[]))])) as {
    [T in JobType]: v.ArraySchema<v.PicklistSchema<readonly Engine[], undefined>, undefined>
  },
)
export type HostEngines = v.InferOutput<typeof HostEngines>

/** What a host writes at each beat (Redis `hostKey(prefix, hostId)`, JSON). */
export const HostHeartbeat = v.object({
  hostId: v.string(),
  version: v.string(),
  pid: count,
  startedAt: iso,
  lastSeen: iso,
  /** How often the host beats; the gateway calls it gone after GONE_AFTER_BEATS missed beats. */
  intervalMs: v.pipe(v.number(), v.minValue(1)),
  /** The host is shutting down: it takes no new job. */
  closing: v.boolean(),
  slots: v.object({ total: count, busy: count, free: count, list: v.array(HostSlot) }),
  gpus: v.array(HostGpu),
  engines: HostEngines,
  jobs: v.array(HostJob),
})
export type HostHeartbeat = v.InferOutput<typeof HostHeartbeat>

/** A host that missed this many beats is shown `gone` (until its key's TTL drops it). */
export const GONE_AFTER_BEATS = 3
/** The key outlives the last beat by this many intervals, so a dead host is shown gone for a while. */
export const KEEP_BEATS = 12

export const HOST_STATUSES = ['up', 'draining', 'gone'] as const

/** One host in `GET /api/hosts`: its last beat and what the gateway makes of it. */
export const HostEntry = v.object({
  ...HostHeartbeat.entries,
  /** `up`; `draining` (shutting down, finishing its jobs); `gone` (no beat for GONE_AFTER_BEATS intervals). */
  status: v.picklist(HOST_STATUSES),
  /** Seconds since the last beat. */
  lastSeenSec: v.number(),
})
export type HostEntry = v.InferOutput<typeof HostEntry>

/** `GET /api/hosts`. */
export const HostsBody = v.object({ hosts: v.array(HostEntry) })
export type HostsBody = v.InferOutput<typeof HostsBody>

/**
 * What the gateway makes of a beat at `now`.
 *
 * @example hostStatus(beat, Date.now()) // 'gone' when 3 beats were missed
 */
export function hostStatus(beat: HostHeartbeat, now: number): HostEntry['status'] {
  if (now - Date.parse(beat.lastSeen) > GONE_AFTER_BEATS * beat.intervalMs) return 'gone'
  return beat.closing ? 'draining' : 'up'
}

/**
 * The hosts whose keys are still there, by id, as the gateway (and a host handing a job over) sees them at `now`. A key that does not
 * parse (a host of another version) is left out rather than failing the list.
 *
 * @example const hosts = await readHosts(redis, config.queuePrefix, Date.now())
 */
export async function readHosts(redis: Redis, queuePrefix: string, now: number): Promise<HostEntry[]> {
  const ids = await redis.zrangebyscore(hostsKey(queuePrefix), now, '+inf')
  if (ids.length === 0) return []
  const values = await redis.mget(...ids.map((id) => hostKey(queuePrefix, id)))
  const hosts: HostEntry[] = []
  for (const value of values) {
    if (value === null) continue
    let parsed: unknown
    try {
      parsed = JSON.parse(value)
    } catch {
      continue
    }
    const beat = v.safeParse(HostHeartbeat, parsed)
    if (!beat.success) continue
    const lastSeenSec = Math.max(0, (now - Date.parse(beat.output.lastSeen)) / 1000)
    hosts.push({ ...beat.output, status: hostStatus(beat.output, now), lastSeenSec })
  }
  return hosts.sort((a, b) => a.hostId.localeCompare(b.hostId))
}
