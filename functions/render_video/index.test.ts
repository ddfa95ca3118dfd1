import { writeFile } from 'node:fs/promises'
import path from 'node:path'
import { afterAll, describe, expect, it } from 'vitest'
import { readAvi } from '../formats/avi.ts'
import { NonRetryableError } from '../sdk/errors.ts'
import { createTestContext, runHandler, type TestContext } from '../sdk/testing.ts'
import {
  expectProgressToEndAt100,
  expectStopsAfterProgress,
  ffprobe,
  HAS_FFPROBE,
  rejectionOf,
} from '../test-support.ts'
import renderVideo, { PREVIEW_FILE, previewOf, VIDEO_FILE, WORKFLOW_FILE } from './index.ts'
import { listTemplates, resolveWorkflow } from './workflow.ts'

const contexts: TestContext[] = []
const context = async (opts: { simulateStepMs?: number; comfyuiUrl?: string } = {}): Promise<TestContext> => {
  const t = await createTestContext({ type: 'render_video', jobId: 'video-job-1', ...opts })
  contexts.push(t)
  return t
}
afterAll(async () => {
  await Promise.all(contexts.map((c) => c.cleanup()))
})

const small = { width: 64, height: 48, frames: 6, fps: 6 }

/** A minimal valid inline graph: an empty latent decoded and saved. */
const inlineGraph = {
  '1': { class_type: 'CheckpointLoaderSimple', inputs: { ckpt_name: 'sd15.safetensors' } },
  '2': { class_type: 'EmptyLatentImage', inputs: { width: 64, height: 48, batch_size: 6 } },
  '3': { class_type: 'VAEDecode', inputs: { samples: ['2', 0], vae: ['1', 2] } },
  '4': { class_type: 'SaveImage', inputs: { images: ['3', 0], filename_prefix: 'inline' } },
}

const artifactJson = (
  t: TestContext,
  name: string,
): Record<string, { class_type: string; inputs: Record<string, unknown> }> =>
  JSON.parse(t.artifacts.files.get(name)?.bytes.toString('utf8') ?? '{}')

describe('render_video (simulate)', () => {
  it('renders the default template to a playable AVI of the requested size, frames and fps', async () => {
    const t = await context()
    const result = await runHandler(
      renderVideo,
      { ...small, inputs: { prompt: 'a red fox in the snow', seed: 42 } },
      t,
    )
    expect(result).toMatchObject({
      engine: 'simulate',
      simulated: true,
      files: [VIDEO_FILE, PREVIEW_FILE, WORKFLOW_FILE],
      workflow: 'default',
      outputNodes: ['9'],
      seed: 42,
      steps: 6,
      frames: 6,
      width: 64,
      height: 48,
      fps: 6,
      durationSec: 1,
    })
    expect(JSON.parse(JSON.stringify(result))).toEqual(result)

    const bytes = t.artifacts.files.get(VIDEO_FILE)?.bytes
    expect(bytes).toBeDefined()
    const avi = readAvi(bytes!)
    expect(avi).toMatchObject({
      width: 64,
      height: 48,
      frames: 6,
      fps: 6,
      streams: 1,
      streamType: 'vids',
      handler: 'DIB ',
      bitCount: 24,
      compression: 0,
      indexEntries: 6,
    })
    expect(avi.info.ICMT).toMatch(/simulated/i)
    expect(avi.info.ISFT).toBeTruthy()
    const frame = (i: number) => bytes!.subarray(avi.frameOffsets[i]!, avi.frameOffsets[i]! + avi.frameBytes)
    expect(frame(0).equals(frame(1))).toBe(false)
    expect(t.artifacts.files.get(VIDEO_FILE)?.record.contentType).toBe('video/x-msvideo')

    // The stored workflow is the template with the job's values in place, typed as ComfyUI expects.
    const graph = artifactJson(t, WORKFLOW_FILE)
    expect(graph['3']?.inputs).toMatchObject({ seed: 42, steps: 20, cfg: 7, model: ['4', 0] })
    expect(graph['5']?.inputs).toEqual({ width: 64, height: 48, batch_size: 6 })
    expect(graph['6']?.inputs.text).toBe('a red fox in the snow')
    expect(graph['9']).toMatchObject({ class_type: 'SaveAnimatedWEBP', inputs: { fps: 6 } })
    expect(JSON.stringify(graph)).not.toContain('{{')
  })

  it('reports one "Sampling frame" event per frame, rising to exactly 100', async () => {
    const t = await context()
    await runHandler(renderVideo, small, t)
    expectProgressToEndAt100(t.progress)
    const frames = t.progress.filter((p) => p.message?.startsWith('Sampling frame'))
    expect(frames.map((p) => p.message)).toEqual([1, 2, 3, 4, 5, 6].map((i) => `Sampling frame ${i}/6`))
  })

  it('seeds the default template from the job id, the same on every attempt', async () => {
    const a = await context()
    const b = await context()
    const ra = (await runHandler(renderVideo, small, a)) as { seed: number }
    const rb = (await runHandler(renderVideo, small, b)) as { seed: number }
    expect(Number.isSafeInteger(ra.seed)).toBe(true)
    expect(rb.seed).toBe(ra.seed)
  })

  it('runs an inline API-format graph as is', async () => {
    const t = await context()
    const result = await runHandler(renderVideo, { ...small, workflow: inlineGraph }, t)
    expect(result).toMatchObject({ workflow: 'inline', outputNodes: ['4'], nodes: 4, seed: null })
    expect(artifactJson(t, WORKFLOW_FILE)).toEqual(inlineGraph)
  })

  it('warns about inputs the workflow does not use', async () => {
    const t = await context()
    await runHandler(renderVideo, { ...small, inputs: { promt: 'typo' } }, t)
    expect(t.logs.some((l) => l.level === 'warn' && l.msg.includes('promt'))).toBe(true)
  })

  it('lists the default template', async () => {
    expect(await listTemplates()).toContain('default')
  })

  it.each([
    ['an unknown template', { workflow: 'no_such_template' }, /params\.workflow no such template.*default/],
    ['a template name that is a path', { workflow: '../secrets' }, /invalid params/],
    ['a mistyped input', { inputs: { steps: 'many' } }, /params\.inputs\.steps/],
    [
      'an inline graph with no output node',
      {
        workflow: {
          '1': { class_type: 'EmptyLatentImage', inputs: { width: 64, height: 64, batch_size: 1 } },
        },
      },
      /no output node/,
    ],
    [
      'an inline graph with a dangling link',
      { workflow: { ...inlineGraph, '4': { class_type: 'SaveImage', inputs: { images: ['99', 0] } } } },
      /params\.workflow\.4\.inputs\.images links to a node that is not in the graph/,
    ],
    [
      'a video too big for an uncompressed AVI',
      { width: 4096, height: 4096, frames: 2000 },
      /over the 1 GiB/,
    ],
  ])('refuses %s as invalid_params before rendering', async (_what, extra, message) => {
    const t = await context()
    const err = await rejectionOf(runHandler(renderVideo, { ...small, ...extra }, t))
    expect(err).toBeInstanceOf(NonRetryableError)
    expect(err.reason).toBe('invalid_params')
    expect(err.message).toMatch(message)
    expect(t.progress).toHaveLength(0)
  })

  // The comfyui engine itself: tests/engines/comfyui.test.ts, against the transcript-replaying stand-in.
  it('fails clearly when the comfyui engine is asked for with COMFYUI_URL unset', async () => {
    const t = await context()
    const err = await rejectionOf(runHandler(renderVideo, { ...small, engine: 'comfyui' }, t))
    expect(err).toBeInstanceOf(NonRetryableError)
    expect(err.reason).toBe('engine_not_configured')
    expect(err.message).toMatch(/engine "comfyui" is not configured on this host: COMFYUI_URL is not set/)
    expect(t.artifacts.files.size).toBe(0)
  })

  it('lists the model-free smoke template and fills it: EmptyImage frames to an h264 mp4', async () => {
    expect(await listTemplates()).toContain('smoke')
    const wf = await resolveWorkflow({ ...small, workflow: 'smoke', inputs: {}, engine: 'comfyui' }, 'job-1')
    expect(wf.outputNodes).toEqual(['7'])
    expect(wf.seed).toBeNull()
    expect(wf.graph['1']?.inputs).toMatchObject({ width: 64, height: 48, batch_size: 1 })
    expect(wf.graph['4']?.inputs).toMatchObject({ amount: 6 })
    expect(wf.graph['5']).toMatchObject({ class_type: 'ImageFromBatch', inputs: { length: 6 } })
    expect(wf.graph['6']).toMatchObject({ class_type: 'CreateVideo', inputs: { fps: 6 } })
    expect(wf.graph['7']).toMatchObject({
      class_type: 'SaveVideo',
      inputs: { format: 'mp4', codec: 'h264', filename_prefix: 'gpu-jobs/job-1' },
    })
    expect(JSON.stringify(wf.graph)).not.toContain('{{')
  })

  it('stops promptly when the job is cancelled', async () => {
    const t = await context({ simulateStepMs: 5 })
    await expectStopsAfterProgress(t, 3, () => runHandler(renderVideo, { ...small, frames: 2000 }, t))
  })

  it.runIf(HAS_FFPROBE)('writes a video ffprobe decodes frame by frame', async () => {
    const t = await context()
    await runHandler(renderVideo, { width: 96, height: 64, frames: 10, fps: 5 }, t)
    const file = path.join(t.ctx.paths.scratch, VIDEO_FILE)
    await writeFile(file, t.artifacts.files.get(VIDEO_FILE)!.bytes)
    const probe = await ffprobe(file)
    expect(probe.streams[0]).toMatchObject({
      codec_type: 'video',
      codec_name: 'rawvideo',
      width: 96,
      height: 64,
      r_frame_rate: '5/1',
      nb_read_frames: '10',
    })
  })
})

describe('the preview', () => {
  it('is small, sampled evenly and as long as the clip', () => {
    expect(previewOf({ width: 1280, height: 720, frames: 120, fps: 24 })).toMatchObject({
      width: 320,
      height: 180,
      frames: 48,
      fps: 9.6, // 48 frames over the clip's 5 s
    })
    expect(previewOf({ width: 64, height: 48, frames: 6, fps: 6 })).toMatchObject({
      width: 64,
      height: 48,
      frames: 6,
      fps: 6,
    })
  })

  it.skipIf(!HAS_FFPROBE)(
    'a simulated render stores an animated PNG that ffprobe reads as one (skipped: no ffprobe)',
    async () => {
      const t = await context()
      await runHandler(renderVideo, { ...small, inputs: { prompt: 'a fox' } }, t)
      const stored = t.artifacts.files.get(PREVIEW_FILE)
      expect(stored?.record.contentType).toBe('image/png')
      const file = path.join(t.ctx.paths.scratch, 'preview-check.png')
      await writeFile(file, stored!.bytes)
      const probed = await ffprobe(file)
      expect(probed.streams[0]).toMatchObject({
        codec_name: 'apng',
        width: 64,
        height: 48,
        nb_read_frames: '6',
      })
    },
  )
})
