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

const num = (s: string | undefined): number | null => {
  const n = Number(s?.trim())
  return s === undefined || Number.isNaN(n) ? null : n
}

/** Parses `nvidia-smi --query-gpu=index,uuid,name,memory.used,memory.total,utilization.gpu --format=csv,noheader,nounits`. */
export function parseNvidiaSmi(csv: string): GpuReading[] {
  return csv
    .split('\n')
    .map((line) => line.split(',').map((f) => f.trim()))
    .filter((f) => f.length >= 5 && /^\d+$/.test(f[0] ?? ''))
    .map((f) => ({
      index: Number(f[0]),
      uuid: f[1] ?? '',
      name: f[2] ?? '',
      memoryUsedMb: num(f[3]) ?? 0,
      memoryTotalMb: num(f[4]) ?? 0,
      utilizationPct: num(f[5]),
    }))
}

/** Reads every GPU, or null where `nvidia-smi` is absent or fails (no GPU on this machine). */
export async function readGpus(): Promise<GpuReading[] | null> {
  try {
    const { stdout } = await run(
      'nvidia-smi',
      [
        '--query-gpu=index,uuid,name,memory.used,memory.total,utilization.gpu',
        '--format=csv,noheader,nounits',
      ],
      { timeout: 10_000 },
    )
    return parseNvidiaSmi(stdout)
  } catch {
    return null
  }
}

/** Processes holding GPU memory, by pid: `nvidia-smi --query-compute-apps`. Null without nvidia-smi. */
export async function readGpuProcesses(): Promise<{ pid: number; gpuUuid: string; usedMb: number }[] | null> {
  try {
    const { stdout } = await run(
      'nvidia-smi',
      ['--query-compute-apps=pid,gpu_uuid,used_memory', '--format=csv,noheader,nounits'],
      { timeout: 10_000 },
    )
    return stdout
      .split('\n')
      .map((line) => line.split(',').map((f) => f.trim()))
      .filter((f) => /^\d+$/.test(f[0] ?? ''))
      .map((f) => ({ pid: Number(f[0]), gpuUuid: f[1] ?? '', usedMb: num(f[2]) ?? 0 }))
  } catch {
    return null
  }
}

/** A unit of concurrency: one GPU, or one virtual slot (GPU_SLOTS) on a machine without one. */
export interface Slot {
  id: number
  gpu: { index: number | null; uuid: string | null; name: string | null; vramTotalMb: number | null }
  /** CUDA_VISIBLE_DEVICES for the job's process; undefined on a virtual slot. */
  cudaVisibleDevices: string | undefined
  busy: boolean
}

export function slotsFor(gpus: GpuReading[] | null, virtualSlots: number): Slot[] {
  if (gpus && gpus.length > 0)
    return gpus.map((g, id) => ({
      id,
      gpu: { index: g.index, uuid: g.uuid, name: g.name, vramTotalMb: g.memoryTotalMb },
      // By UUID: indexes can differ between nvidia-smi and CUDA's default ordering.
      cudaVisibleDevices: g.uuid || String(g.index),
      busy: false,
    }))
  return Array.from({ length: virtualSlots }, (_, id) => ({
    id,
    gpu: { index: null, uuid: null, name: null, vramTotalMb: null },
    cudaVisibleDevices: undefined,
    busy: false,
  }))
}

/**
 * VRAM-aware choice of a slot: the free slot whose GPU has the most free memory, if that is at least
 * `vramMb`. `noRoom` when slots are free but none has the memory (another process holds it, e.g. ComfyUI
 * keeping models loaded). Without readings (no nvidia-smi) any free slot will do.
 */
export function pickSlot(
  slots: Slot[],
  readings: GpuReading[] | null,
  vramMb: number,
): { slot: Slot } | { noRoom: true; bestFreeMb: number } | { none: true } {
  const free = slots.filter((s) => !s.busy)
  if (free.length === 0) return { none: true }
  if (!readings || readings.length === 0) return { slot: free[0] as Slot }
  const withFree = free.map((slot) => {
    const g = readings.find((r) => r.uuid === slot.gpu.uuid)
    return { slot, freeMb: g ? g.memoryTotalMb - g.memoryUsedMb : Number.POSITIVE_INFINITY }
  })
  withFree.sort((a, b) => b.freeMb - a.freeMb)
  const best = withFree[0] as { slot: Slot; freeMb: number }
  return best.freeMb >= vramMb ? { slot: best.slot } : { noRoom: true, bestFreeMb: best.freeMb }
}
