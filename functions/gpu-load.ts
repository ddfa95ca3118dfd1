import { type ChildProcess, spawn } from 'node:child_process'
import path from 'node:path'
import { findExecutable } from '../schema/executables.ts'
import type { HandlerContext } from './sdk/context.ts'

/** Where the compiled cuda/ programs live: GPU_JOBS_BIN, the image's folder, or a local `make` build. */
const binDirs = (): string[] =>
  [process.env.GPU_JOBS_BIN, '/opt/gpu-jobs/bin', path.resolve('cuda/build')].filter(
    (d): d is string => typeof d === 'string' && d !== '',
  )

export interface GpuLoad {
  stop(): Promise<void>
}

/**
 * On a GPU, runs cuda/'s workload program beside a simulated job (allocate VRAM, keep the GPU busy) so
 * that a mock job puts real memory and utilisation on the dashboard. It runs in the job's process group,
 * so every kill path of the job reaches it. Returns null where there is no GPU or no workload binary.
 */
export async function startGpuLoad(
  ctx: Pick<HandlerContext, 'gpu' | 'log'>,
  opts: { seconds: number; vramMb: number },
): Promise<GpuLoad | null> {
  if (ctx.gpu.uuid === null) return null
  const bin = await findExecutable('workload', binDirs())
  if (!bin) {
    ctx.log.info(
      'GPU present but no cuda workload binary (set GPU_JOBS_BIN or run `make -C cuda`): simulating on the CPU only',
    )
    return null
  }
  // At most a quarter of the card, so simulated jobs never starve real ones.
  const mib = Math.max(64, Math.min(opts.vramMb, Math.floor((ctx.gpu.vramTotalMb ?? 4096) / 4)))
  const seconds = Math.max(1, Math.ceil(opts.seconds))
  const child: ChildProcess = spawn(bin, ['--mib', String(mib), '--seconds', String(seconds)], {
    stdio: 'ignore',
  })
  const exited = new Promise<void>((resolve) => {
    child.once('exit', () => resolve())
    child.once('error', () => resolve())
  })
  ctx.log.info(`GPU load: ${bin} holding ${mib} MiB for up to ${seconds} s on ${ctx.gpu.uuid}`)
  return {
    stop: async () => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM')
      await exited
    },
  }
}
