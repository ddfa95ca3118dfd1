import { createRng } from './formats/prng.ts'
import { startGpuLoad } from './gpu-load.ts'
import type { HandlerContext } from './sdk/context.ts'

/**
 * The shared loop of the `simulate` engines: a run of fixed-length steps, one progress event per step,
 * that stops as soon as the job's signal aborts. Each handler supplies only its step messages.
 */

/** Steps per epoch of the simulated training types (DESIGN: `epochs x 10` steps). */
export const STEPS_PER_EPOCH = 10

/** Where the step loop leaves progress; the handler reports 100 once its artifacts are stored. */
export const STEPS_END_PERCENT = 95

const abortError = (signal: AbortSignal): Error =>
  signal.reason instanceof Error ? signal.reason : new Error(String(signal.reason ?? 'aborted'))

/**
 * Waits `ms`, rejecting with the signal's reason as soon as it aborts (not at the end of the wait). A wait
 * of 0 still yields to the event loop, so a zero-length simulation stays cancellable and lets IPC through.
 *
 * @example await abortableSleep(200, ctx.signal)
 */
export function abortableSleep(ms: number, signal: AbortSignal): Promise<void> {
  if (signal.aborted) return Promise.reject(abortError(signal))
  return new Promise((resolve, reject) => {
    const onAbort = () => {
      clearTimeout(timer)
      clearImmediate(immediate)
      reject(abortError(signal))
    }
    const done = () => {
      signal.removeEventListener('abort', onAbort)
      resolve()
    }
    const timer = ms > 0 ? setTimeout(done, ms) : undefined
    const immediate = ms > 0 ? undefined : setImmediate(done)
    signal.addEventListener('abort', onAbort, { once: true })
  })
}

const round2 = (x: number): number => Math.round(x * 100) / 100

/**
 * Runs `totalSteps` steps of `ctx.engines.simulateStepMs` each and reports progress after every one, rising
 * evenly to `endPercent`. `message(step)` (1-based) gives each event's text, in the real engine's style.
 * Rejects with the signal's reason when the job is cancelled, timed out or shut down.
 *
 * @example
 * await runSimulatedSteps(ctx, { totalSteps: 24, message: (i) => `Sampling frame ${i}/24` })
 */
export async function runSimulatedSteps(
  ctx: Pick<HandlerContext, 'signal' | 'progress' | 'engines'> & Partial<Pick<HandlerContext, 'gpu' | 'log'>>,
  plan: { totalSteps: number; message: (step: number) => string; endPercent?: number; vramMb?: number },
): Promise<void> {
  const { totalSteps, message, endPercent = STEPS_END_PERCENT } = plan
  const stepMs = Math.max(0, ctx.engines.simulateStepMs)
  const load =
    ctx.gpu && ctx.log
      ? await startGpuLoad(
          { gpu: ctx.gpu, log: ctx.log },
          { seconds: (totalSteps * stepMs) / 1000 + 1, vramMb: plan.vramMb ?? 2048 },
        )
      : null
  try {
    for (let step = 1; step <= totalSteps; step++) {
      await abortableSleep(stepMs, ctx.signal)
      ctx.progress(round2((step / totalSteps) * endPercent), message(step))
    }
  } finally {
    await load?.stop()
  }
}

/**
 * A plausible training loss at `fraction` (0 to 1) of the run: exponential decay from `start` towards
 * `floor`, with a little seeded jitter, as a smoothed loss curve looks in a trainer's log.
 */
export function lossCurve(opts: {
  start: number
  floor: number
  seed: string
  rate?: number
  jitter?: number
}): (fraction: number) => number {
  const { start, floor, seed, rate = 3.5, jitter = 0.02 } = opts
  const rand = createRng(seed)
  return (fraction) => {
    const trend = floor + (start - floor) * Math.exp(-rate * fraction)
    return trend * (1 + (rand() * 2 - 1) * jitter)
  }
}

/** The 1-based epoch that `step` (1-based) of a simulated training run falls in. */
export const epochOf = (step: number): number => Math.ceil(step / STEPS_PER_EPOCH)
