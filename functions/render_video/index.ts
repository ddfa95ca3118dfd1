import { Readable } from 'node:stream'
import { JOB_CATALOG, type RenderVideoParams } from '../../schema/params/index.ts'
import { encodeApng } from '../formats/apng.ts'
import { AVI_MAX_BYTES, aviFileSize, encodeAvi, testPattern } from '../formats/avi.ts'
import type { HandlerContext } from '../sdk/context.ts'
import { defineHandler, engineResult } from '../sdk/define.ts'
import { engineNotConfigured, NonRetryableError, throwIfAborted } from '../sdk/errors.ts'
import { reportAndPrint, runSimulatedSteps } from '../simulate.ts'
import { runComfyPrompt } from './comfyui/index.ts'
import { type ResolvedWorkflow, resolveWorkflow } from './workflow.ts'

/** Artifact names, relative to `videos/<jobId>/`. */
export const VIDEO_FILE = 'video.avi'
export const WORKFLOW_FILE = 'workflow.json'
/** An animated PNG of the same clip, small, for browsers: they play APNG in an `<img>`, not an AVI. */
export const PREVIEW_FILE = 'preview.png'
/** The preview's bounds: at most this wide and this many frames (sampled evenly, at the clip's length). */
const PREVIEW_MAX_WIDTH = 320
const PREVIEW_MAX_FRAMES = 48

/**
 * Video rendering. Engines: `comfyui` (ComfyUI's HTTP + WebSocket API at COMFYUI_URL, see ./comfyui.ts and
 * docs/engines/comfyui.md: every output file of the prompt, plus the `workflow.json` it ran) and
 * `simulate`, which samples one timed step per frame and writes a playable uncompressed `video.avi` of the
 * requested size, frame count and fps (its INFO comment says it is simulated), plus the resolved
 * `workflow.json` the real engine would have queued.
 */
export default defineHandler({
  type: 'render_video',
  async run(job, ctx) {
    const workflow = await resolveWorkflow(job.params, job.jobId)
    if (workflow.unusedInputs.length > 0)
      ctx.log.warn(`inputs not used by workflow "${workflow.source}": ${workflow.unusedInputs.join(', ')}`)
    switch (job.params.engine) {
      case 'simulate':
        return simulate(job.params, workflow, ctx)
      case 'comfyui':
        if (!ctx.engines.comfyuiUrl)
          throw engineNotConfigured(
            'comfyui',
            'COMFYUI_URL is not set; point it at a ComfyUI server (docs/engines/comfyui.md) or use engine "simulate"',
          )
        return comfyui(job.params, workflow, ctx)
    }
  },
})

async function simulate(p: RenderVideoParams, workflow: ResolvedWorkflow, ctx: HandlerContext) {
  const { width, height, frames, fps } = p
  const info = {
    INAM: `render_video ${ctx.jobId}`,
    ISFT: 'gpu-jobs simulate engine',
    ICMT: `Simulated by gpu-jobs (engine "simulate", workflow "${workflow.source}"): a test pattern, not a rendered video.`,
  }
  // Checked before the steps run, so an impossible request fails at once rather than after the wait.
  const bytes = aviFileSize({ width, height, frames, info })
  if (bytes > AVI_MAX_BYTES)
    throw new NonRetryableError(
      `the simulate engine writes uncompressed AVI: ${width}x${height} x ${frames} frames would be ` +
        `${(bytes / 1024 ** 3).toFixed(2)} GiB, over the 1 GiB AVI limit; lower width, height or frames`,
      { reason: 'invalid_params' },
    )

  reportAndPrint(
    ctx,
    0,
    `queued prompt (simulated): workflow "${workflow.source}", ${frames} frames at ${width}x${height}`,
  )
  await runSimulatedSteps(ctx, {
    totalSteps: frames,
    message: (i) => `Sampling frame ${i}/${frames}`,
    vramMb: JOB_CATALOG.render_video.defaults.vramMb,
  })
  throwIfAborted(ctx.signal)

  reportAndPrint(ctx, 97, `encoding ${VIDEO_FILE}`)
  const video = await ctx.artifacts.put(
    VIDEO_FILE,
    Readable.from(encodeAvi({ width, height, frames, fps, info })),
  )
  await ctx.artifacts.put(PREVIEW_FILE, Readable.from(encodeApng(previewOf(p))))
  await ctx.artifacts.put(WORKFLOW_FILE, `${JSON.stringify(workflow.graph, null, 2)}\n`)
  const durationSec = frames / fps
  reportAndPrint(ctx, 100, `Saved ${VIDEO_FILE} (${frames} frames, ${width}x${height} @ ${fps} fps)`)

  return {
    ...engineResult('simulate', [VIDEO_FILE, PREVIEW_FILE, WORKFLOW_FILE]),
    ...renderSummary(p, workflow),
    steps: frames,
    durationSec,
    videoBytes: video.size,
  }
}

/** The real engine: the resolved graph on ComfyUI, its output files streamed to `videos/<jobId>/`. */
async function comfyui(p: RenderVideoParams, workflow: ResolvedWorkflow, ctx: HandlerContext) {
  const run = await runComfyPrompt(ctx, workflow.graph, workflow.outputNodes, {
    reserved: new Set([WORKFLOW_FILE]),
  })
  await ctx.artifacts.put(WORKFLOW_FILE, `${JSON.stringify(workflow.graph, null, 2)}\n`)
  const files = [...run.files.map((f) => f.path), WORKFLOW_FILE]
  ctx.progress(100, `Saved ${run.files.length} file${run.files.length === 1 ? '' : 's'} from ComfyUI`)
  return {
    ...engineResult('comfyui', files),
    ...renderSummary(p, workflow),
    promptId: run.promptId,
    outputs: run.files.map((f) => ({ path: f.path, contentType: f.contentType, size: f.size })),
    cachedNodes: run.cachedNodes,
  }
}

/** The part of a render_video result both engines report the same way: the graph run and the video asked for. */
const renderSummary = (p: RenderVideoParams, workflow: ResolvedWorkflow) => ({
  workflow: workflow.source,
  outputNodes: workflow.outputNodes,
  nodes: Object.keys(workflow.graph).length,
  seed: workflow.seed,
  frames: p.frames,
  width: p.width,
  height: p.height,
  fps: p.fps,
})

/**
 * The preview of a simulated clip: the AVI's test pattern at most PREVIEW_MAX_WIDTH wide (the same aspect)
 * and PREVIEW_MAX_FRAMES frames, sampled evenly and played at a rate that keeps the clip's duration.
 */
export function previewOf({
  width,
  height,
  frames,
  fps,
}: Pick<RenderVideoParams, 'width' | 'height' | 'frames' | 'fps'>) {
  const scale = Math.min(1, PREVIEW_MAX_WIDTH / width)
  const w = Math.max(1, Math.round(width * scale))
  const h = Math.max(1, Math.round(height * scale))
  const count = Math.min(frames, PREVIEW_MAX_FRAMES)
  const paint = testPattern(w, h, frames)
  return {
    width: w,
    height: h,
    frames: count,
    fps: (fps * count) / frames,
    paint: (i: number, pixels: Uint8Array) => paint(Math.floor((i * frames) / count), pixels),
  }
}
