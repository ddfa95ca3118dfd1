import { setImmediate, setTimeout as sleep } from 'node:timers/promises'
import { createRng } from './formats/prng.ts'
import { startGpuLoad } from './gpu-load.ts'
import type { HandlerContext } from './sdk/context.ts'
import { abortReason, throwIfAborted } from './sdk/errors.ts'

/**
 * The shared loop of the `simulate` engines: a run of fixed-length steps, one progress event per step,
 * that stops as soon as the job's signal aborts. Each handler supplies only its step messages.
 */

/** Steps per epoch of the simulated training types (DESIGN: `epochs x 10` steps). */
export const STEPS_PER_EPOCH = 10

/** Where the step loop leaves progress; the handler reports 100 once its artifacts are stored. */
export const STEPS_END_PERCENT = 95

/**
 * Waits `ms`, rejecting with the signal's reason (not timers' AbortError) as soon as it aborts. A wait of 0
 * still yields to the event loop, so a zero-length simulation stays cancellable and lets IPC through.
 *
 * @example await abortableSleep(200, ctx.signal)
 */
export async function abortableSleep(ms: number, signal: AbortSignal): Promise<void> {
  if (signal.aborted) throw abortReason(signal)
  try {
    await (ms > 0 ? sleep(ms, undefined, { signal }) : setImmediate(undefined, { signal }))
  } catch (err) {
    throw signal.aborted ? abortReason(signal) : err
  }
}

const round2 = (x: number): number => Math.round(x * 100) / 100

/**
 * The steps printed to the job's log, thinned as a real engine's progress bar is: the first, about 20 in
 * all, the last, and one at least every 5 s of a slow run.
 */
const PRINTED_STEPS = 20
const PRINT_AT_LEAST_MS = 5_000

/**
 * Reports progress and prints the same text to the job's log (`ctx.log`, kept per attempt), as a real
 * engine's console shows what it reports: the simulated engines have no output of their own, and without
 * this a simulated job's logs would be empty (nothing to read of an attempt that timed out, say).
 */
export function reportAndPrint(
  ctx: Pick<HandlerContext, 'progress'> & Partial<Pick<HandlerContext, 'log'>>,
  percent: number,
  message: string,
  metrics?: Record<string, number>,
): void {
  ctx.progress(percent, message, metrics)
  ctx.log?.info(message)
}

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
  plan: {
    totalSteps: number
    message: (step: number) => string
    /** Numbers to chart with each step's progress (ctx.progress's third argument). */
    metrics?: (step: number) => Record<string, number>
    endPercent?: number
    vramMb?: number
  },
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
    const printEvery = Math.ceil(totalSteps / PRINTED_STEPS)
    let printedAt = Date.now()
    for (let step = 1; step <= totalSteps; step++) {
      await abortableSleep(stepMs, ctx.signal)
      const text = message(step)
      ctx.progress(round2((step / totalSteps) * endPercent), text, plan.metrics?.(step))
      const now = Date.now()
      if (
        step === 1 ||
        step % printEvery === 0 ||
        step === totalSteps ||
        now - printedAt >= PRINT_AT_LEAST_MS
      ) {
        ctx.log?.info(text)
        printedAt = now
      }
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

/**
 * The simulated run of a training type: `epochs x 10` steps on a seeded loss curve, each step's message
 * written by `message` from the 1-based step, its epoch and the loss rounded to `digits`. Resolves with the
 * step count and the last loss, for the handler's files and result.
 *
 * @example
 * const { totalSteps, finalLoss } = await simulateTraining(ctx, {
 *   epochs: 5, vramMb: 8_000, digits: 4, loss: { start: 0.34, floor: 0.07 },
 *   message: ({ epoch, loss }) => `Epoch ${epoch}/5 - loss=${loss}`,
 * })
 */
export async function simulateTraining(
  ctx: Parameters<typeof runSimulatedSteps>[0] & Pick<HandlerContext, 'jobId'>,
  plan: {
    epochs: number
    vramMb: number
    digits: number
    loss: { start: number; floor: number; rate?: number }
    message: (at: { step: number; epoch: number; loss: string }) => string
  },
): Promise<{ totalSteps: number; finalLoss: number }> {
  const totalSteps = plan.epochs * STEPS_PER_EPOCH
  const loss = lossCurve({ ...plan.loss, seed: `${ctx.jobId}:loss` })
  let finalLoss = 0
  await runSimulatedSteps(ctx, {
    vramMb: plan.vramMb,
    totalSteps,
    message: (step) => {
      finalLoss = Number(loss(step / totalSteps).toFixed(plan.digits))
      return plan.message({ step, epoch: epochOf(step), loss: finalLoss.toFixed(plan.digits) })
    },
    // Called after `message` for the same step, so it reports the loss that the message shows.
    metrics: (step) => ({ loss: finalLoss, epoch: epochOf(step) }),
  })
  throwIfAborted(ctx.signal)
  return { totalSteps, finalLoss }
}
