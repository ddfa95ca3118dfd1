/**
 * What `nvidia-smi` says about this machine's GPUs: their readings (`--query-gpu`), the processes holding
 * their memory (`--query-compute-apps`) and their MIG instances (`-L`), and the devices a job can be
 * placed on (a GPU, a MIG instance, or a virtual slot where there is no GPU).
 */
import { execFile } from 'node:child_process'
import { promisify } from 'node:util'

const run = promisify(execFile)

/** One GPU as `nvidia-smi` reports it; memory in MiB. */
export interface GpuReading {
  index: number
  uuid: string
  name: string
  memoryUsedMb: number
  memoryTotalMb: number
  utilizationPct: number | null
}

/** One process holding GPU memory (`gpuUuid` is the physical GPU's, also for a process on a MIG instance). */
export interface GpuProcess {
  pid: number
  gpuUuid: string
  usedMb: number
}

/** One MIG instance as `nvidia-smi -L` lists it under its GPU. */
export interface MigInstance {
  /** The profile, e.g. `1g.18gb`. */
  profile: string
  /** Its device number under the GPU (`Device  0`). */
  device: number
  /** `MIG-<uuid>` (older drivers: `MIG-GPU-<uuid>/<gi>/<ci>`): what CUDA_VISIBLE_DEVICES takes. */
  uuid: string
  /** Its GPU instance id (the `GI ID` of nvidia-smi's MIG devices table; dcgm-exporter's `GPU_I_ID`). */
  gpuInstanceId?: number
}

/** One GPU as `nvidia-smi -L` lists it, with its MIG instances (none when MIG is off). */
export interface GpuListing {
  index: number
  name: string
  uuid: string
  mig: MigInstance[]
}

/**
 * A number from a CSV field with or without its unit (`1234`, `1234 MiB`, `90 %`); null for `[N/A]`,
 * `[Not Supported]` and anything else that is not one.
 */
const num = (s: string | undefined): number | null => {
  const m = s?.trim().match(/^(-?\d+(?:\.\d+)?)(?:\s*[A-Za-z%]+)?$/)
  return m ? Number(m[1]) : null
}

const csvRows = (csv: string): string[][] =>
  csv
    .split('\n')
    .map((line) => line.split(',').map((f) => f.trim()))
    .filter((f) => /^\d+$/.test(f[0] ?? ''))

/**
 * Parses `nvidia-smi --query-gpu=index,uuid,name,memory.used,memory.total,utilization.gpu
 * --format=csv,noheader[,nounits]`: with `nounits` or without (`1234 MiB`, `90 %`).
 */
export function parseNvidiaSmi(csv: string): GpuReading[] {
  return csvRows(csv)
    .filter((f) => f.length >= 5)
    .map((f) => ({
      index: Number(f[0]),
      uuid: f[1] ?? '',
      name: f[2] ?? '',
      memoryUsedMb: num(f[3]) ?? 0,
      memoryTotalMb: num(f[4]) ?? 0,
      utilizationPct: num(f[5]),
    }))
}

/** Parses `nvidia-smi --query-compute-apps=pid,gpu_uuid,used_memory --format=csv,noheader[,nounits]`. */
export function parseComputeApps(csv: string): GpuProcess[] {
  return csvRows(csv).map((f) => ({ pid: Number(f[0]), gpuUuid: f[1] ?? '', usedMb: num(f[2]) ?? 0 }))
}

const GPU_LINE = /^GPU (\d+): (.*) \(UUID: (GPU-[^)\s]+)\)\s*$/
const MIG_LINE = /^\s+MIG (\S+)\s+Device\s+(\d+): \(UUID: (MIG-[^)\s]+)\)\s*$/

/**
 * Parses `nvidia-smi -L`: `GPU 0: NVIDIA H200 (UUID: GPU-...)`, each MIG instance on an indented line
 * below it (`  MIG 1g.18gb     Device  0: (UUID: MIG-...)`).
 */
export function parseGpuList(text: string): GpuListing[] {
  const gpus: GpuListing[] = []
  for (const line of text.split('\n')) {
    const g = line.match(GPU_LINE)
    if (g) {
      gpus.push({ index: Number(g[1]), name: g[2] ?? '', uuid: g[3] ?? '', mig: [] })
      continue
    }
    const m = line.match(MIG_LINE)
    const parent = gpus.at(-1)
    if (m && parent) parent.mig.push({ profile: m[1] ?? '', device: Number(m[2]), uuid: m[3] ?? '' })
  }
  return gpus
}

/** A row of nvidia-smi's "MIG devices" table: `|  0    9   0   0  |  12MiB / 9984MiB | ...` (GPU, GI, CI, MIG Dev). */
const MIG_DEVICE_ROW = /^\|\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+\|/

/**
 * Parses the "MIG devices" table of plain `nvidia-smi`: the GPU instance id of each MIG device, keyed
 * `<gpu index>/<MIG Dev>` (MIG Dev is the `Device N` of `nvidia-smi -L`).
 */
export function parseMigDevices(text: string): Map<string, number> {
  const ids = new Map<string, number>()
  for (const line of text.split('\n')) {
    const m = line.match(MIG_DEVICE_ROW)
    if (m) ids.set(`${m[1]}/${m[4]}`, Number(m[2]))
  }
  return ids
}

/**
 * A MIG instance's memory in MiB, from its profile (`1g.18gb`: 18 GB). The profile rounds to whole GB
 * and nvidia-smi's CSV has no per-instance memory, so the GB are read as 10^9 bytes: a little under what
 * the instance has, never over.
 */
export function migMemoryMb(profile: string): number {
  const gb = Number(profile.match(/\.(\d+(?:\.\d+)?)gb$/i)?.[1] ?? Number.NaN)
  return Number.isFinite(gb) ? Math.floor((gb * 1e9) / 2 ** 20) : 0
}

const smi = async (args: string[]): Promise<string | null> => {
  try {
    return (await run('nvidia-smi', args, { timeout: 10_000 })).stdout
  } catch {
    return null
  }
}

/** Reads every GPU, or null where `nvidia-smi` is absent or fails (no GPU on this machine). */
export async function readGpus(): Promise<GpuReading[] | null> {
  const out = await smi([
    '--query-gpu=index,uuid,name,memory.used,memory.total,utilization.gpu',
    '--format=csv,noheader,nounits',
  ])
  return out === null ? null : parseNvidiaSmi(out)
}

/** Processes holding GPU memory, by pid: `nvidia-smi --query-compute-apps`. Null without nvidia-smi. */
export async function readGpuProcesses(): Promise<GpuProcess[] | null> {
  const out = await smi(['--query-compute-apps=pid,gpu_uuid,used_memory', '--format=csv,noheader,nounits'])
  return out === null ? null : parseComputeApps(out)
}

/** The GPUs and their MIG instances (`nvidia-smi -L`); null without nvidia-smi. */
export async function readGpuList(): Promise<GpuListing[] | null> {
  const out = await smi(['-L'])
  if (out === null) return null
  const gpus = parseGpuList(out)
  // The GPU instance ids (dcgm-exporter labels MIG series with them) are only in the plain table.
  if (gpus.some((g) => g.mig.length > 0)) {
    const ids = parseMigDevices((await smi([])) ?? '')
    for (const g of gpus)
      for (const m of g.mig) {
        const id = ids.get(`${g.index}/${m.device}`)
        if (id !== undefined) m.gpuInstanceId = id
      }
  }
  return gpus
}

/**
 * A device a job is placed on: one GPU, one MIG instance of a GPU, or one virtual slot (GPU_SLOTS) on a
 * machine without one. Several jobs may share a GPU or MIG instance (gpu-host/vram-ledger.ts).
 */
export interface Slot {
  id: number
  /** For a MIG instance: the GPU's index, the instance's uuid, `<GPU name> MIG <profile>` and its memory. */
  gpu: { index: number | null; uuid: string | null; name: string | null; vramTotalMb: number | null }
  /** A MIG instance: its profile, device number, GPU instance id (when known) and its physical GPU. */
  mig?: { profile: string; device: number; gpuUuid: string; gpuInstanceId?: number }
  /** CUDA_VISIBLE_DEVICES for the job's process (a GPU or MIG uuid); undefined on a virtual slot. */
  cudaVisibleDevices: string | undefined
  /** Jobs running on it now. */
  jobs: number
  /** At least one job runs on it. */
  busy: boolean
}

/** The physical GPU a slot is on (a MIG instance's parent), for matching readings and processes. */
export const physicalUuid = (slot: Slot): string | null => slot.mig?.gpuUuid ?? slot.gpu.uuid

/**
 * The devices of this machine: per GPU, one slot, or one per MIG instance where `-L` lists some (each its
 * own device with its own memory); without GPUs, `virtualSlots` virtual slots.
 */
export function slotsFor(
  gpus: GpuReading[] | null,
  virtualSlots: number,
  listing: GpuListing[] | null = null,
): Slot[] {
  if (gpus && gpus.length > 0)
    return gpus
      .flatMap((g): Omit<Slot, 'id'>[] => {
        const mig = listing?.find((l) => l.uuid === g.uuid)?.mig ?? []
        if (mig.length > 0)
          return mig.map((m) => ({
            gpu: {
              index: g.index,
              uuid: m.uuid,
              name: `${g.name} MIG ${m.profile}`,
              vramTotalMb: migMemoryMb(m.profile),
            },
            mig: {
              profile: m.profile,
              device: m.device,
              gpuUuid: g.uuid,
              ...(m.gpuInstanceId === undefined ? {} : { gpuInstanceId: m.gpuInstanceId }),
            },
            cudaVisibleDevices: m.uuid,
            jobs: 0,
            busy: false,
          }))
        return [
          {
            gpu: { index: g.index, uuid: g.uuid, name: g.name, vramTotalMb: g.memoryTotalMb },
            // By UUID: indexes can differ between nvidia-smi and CUDA's default ordering.
            cudaVisibleDevices: g.uuid || String(g.index),
            jobs: 0,
            busy: false,
          },
        ]
      })
      .map((s, id) => ({ id, ...s }))
  return Array.from({ length: virtualSlots }, (_, id) => ({
    id,
    gpu: { index: null, uuid: null, name: null, vramTotalMb: null },
    cudaVisibleDevices: undefined,
    jobs: 0,
    busy: false,
  }))
}
