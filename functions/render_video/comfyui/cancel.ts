/** Cancel and timeout: the job's prompt out of ComfyUI (deleted when pending, interrupted when running). */
import { setTimeout as sleep } from 'node:timers/promises'
import type { HandlerContext } from '../../sdk/context.ts'
import { type ComfyEndpoint, type ComfyTimings, comfyPost, queueState } from './http.ts'

/**
 * Takes the job's prompt out of ComfyUI: deleted from the queue when pending, interrupted when running
 * (the interrupt lands at the next node boundary), then waits, within `cancelWaitMs`, for
 * `execution_interrupted` or the prompt leaving /queue, so ComfyUI is idle when the job says cancelled.
 */
export async function cancelPrompt(
  ep: ComfyEndpoint,
  promptId: string,
  timings: ComfyTimings,
  ctx: HandlerContext,
  isStopped: () => boolean,
): Promise<void> {
  const deadline = Date.now() + timings.cancelWaitMs
  const t = { ...timings, httpTimeoutMs: Math.min(timings.httpTimeoutMs, timings.cancelWaitMs) }
  if (isStopped()) return
  let state = await queueState(ep, promptId, t)
  if (state.pending) {
    await comfyPost(ep, 'queue', { delete: [promptId] }, t.httpTimeoutMs)
    state = await queueState(ep, promptId, t)
    if (!state.running && !state.pending) {
      ctx.log.info(`ComfyUI prompt ${promptId} deleted from the queue before it ran`)
      return
    }
  }
  if (!state.running) return
  const interruptedAt = Date.now()
  await comfyPost(ep, 'interrupt', { prompt_id: promptId }, t.httpTimeoutMs)
  ctx.log.info(`ComfyUI prompt ${promptId} interrupted; waiting for it to stop`)
  const stopped = () => {
    ctx.log.info(`ComfyUI prompt ${promptId} stopped ${Date.now() - interruptedAt} ms after the interrupt`)
  }
  while (Date.now() < deadline) {
    if (isStopped()) return stopped()
    await sleep(Math.min(250, Math.max(0, deadline - Date.now())))
    if (isStopped()) return stopped()
    const now = await queueState(ep, promptId, t).catch(() => null)
    if (now && !now.running && !now.pending) return stopped()
  }
  ctx.log.warn(
    `ComfyUI prompt ${promptId} still running ${Math.round(timings.cancelWaitMs / 1000)} s after the interrupt`,
  )
}
