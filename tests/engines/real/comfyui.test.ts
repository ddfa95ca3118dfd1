import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { ffprobe, HAS_FFPROBE } from '../../../functions/test-support.ts'
import { type Stack, startStack, waitFor } from '../../helpers/stack.ts'

/**
 * render_video against a REAL ComfyUI (`npm run test:engines` with COMFYUI_URL set, e.g. the engines lab's
 * `/work/lab/start-comfyui.sh` on http://127.0.0.1:8188): through the whole stack, model-free graphs only,
 * so any ComfyUI can run them. Skipped with its reason otherwise.
 */

const COMFYUI_URL = process.env.COMFYUI_URL
const why = !COMFYUI_URL
  ? 'COMFYUI_URL is not set (point it at a running ComfyUI to run these)'
  : !HAS_FFPROBE
    ? 'ffprobe is not on PATH (package ffmpeg)'
    : ''

/** GET /queue of the real ComfyUI: the prompt ids it runs and has pending. */
async function comfyQueue(): Promise<{ running: string[]; pending: string[] }> {
  const res = await fetch(new URL('queue', `${COMFYUI_URL?.replace(/\/$/, '')}/`))
  const json = (await res.json()) as { queue_running: unknown[][]; queue_pending: unknown[][] }
  return {
    running: json.queue_running.map((i) => String(i[1])),
    pending: json.queue_pending.map((i) => String(i[1])),
  }
}

/** A graph that takes ComfyUI several seconds per node on a CPU (as in transcript t06), to cancel mid-run. */
const slowGraph = (seed: number) => ({
  '1': {
    class_type: 'EmptyImage',
    inputs: { width: 768, height: 768, batch_size: 32, color: seed },
  },
  '3': { class_type: 'ImageAddNoise', inputs: { image: ['1', 0], seed: seed + 3, strength: 0.5 } },
  '4': { class_type: 'ImageAddNoise', inputs: { image: ['3', 0], seed: seed + 4, strength: 0.5 } },
  '5': { class_type: 'ImageAddNoise', inputs: { image: ['4', 0], seed: seed + 5, strength: 0.5 } },
  '6': { class_type: 'ImageAddNoise', inputs: { image: ['5', 0], seed: seed + 6, strength: 0.5 } },
  '2': { class_type: 'SaveImageWebsocket', inputs: { images: ['6', 0] } },
})

describe.skipIf(why !== '')(`render_video on a real ComfyUI ${why ? `(skipped: ${why})` : ''}`, () => {
  let stack: Stack
  let dir: string
  beforeAll(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'comfy-real-'))
    stack = await startStack({ env: { COMFYUI_URL: COMFYUI_URL as string, KILL_GRACE_SEC: '15' } })
  })
  afterAll(async () => {
    await stack?.close()
    await rm(dir, { recursive: true, force: true })
  })

  /** Downloads an artifact through the gateway and ffprobes it. */
  async function probeArtifact(jobId: string, name: string) {
    const res = await fetch(stack.url(`/api/jobs/${jobId}/artifacts/${name}`))
    expect(res.status).toBe(200)
    expect(res.headers.get('content-type')).toBe('video/mp4')
    const file = path.join(dir, `${jobId}-${name}`)
    await writeFile(file, Buffer.from(await res.arrayBuffer()))
    return ffprobe(file)
  }

  it('smoke: the model-free template to a playable h264 mp4 in the bucket', async () => {
    const started = Date.now()
    const { json } = await stack.post({
      type: 'render_video',
      params: { engine: 'comfyui', workflow: 'smoke', width: 128, height: 96, frames: 24, fps: 12 },
    })
    const jobId = json.jobId as string
    const done = await stack.waitStatus(jobId, ['completed', 'failed', 'cancelled'], 120_000)
    expect(done.error ?? null).toBeNull()
    expect(done.status).toBe('completed')
    const result = done.result as { files: string[]; promptId: string }
    const mp4 = result.files.find((f) => f.endsWith('.mp4'))
    expect(mp4).toMatch(new RegExp(`^${jobId}_\\d{5}_\\.mp4$`))
    const p = await probeArtifact(jobId, mp4 as string)
    expect(p.streams[0]).toMatchObject({
      codec_type: 'video',
      codec_name: 'h264',
      width: 128,
      height: 96,
      r_frame_rate: '12/1',
      nb_read_frames: '24',
    })
    expect(done.artifacts.map((a) => a.path).sort()).toEqual([mp4, 'workflow.json'].sort())
    console.log(`[real comfyui] smoke job ${jobId}: ${Date.now() - started} ms submit-to-completed`)
  })

  it('an inline model-free graph: every output (mp4, animated webp) lands in the bucket, typed', async () => {
    const started = Date.now()
    const graph = {
      '1': { class_type: 'EmptyImage', inputs: { width: 160, height: 120, batch_size: 1, color: 3368652 } },
      '2': { class_type: 'EmptyImage', inputs: { width: 160, height: 120, batch_size: 1, color: 16763904 } },
      '3': { class_type: 'ImageBatch', inputs: { image1: ['1', 0], image2: ['2', 0] } },
      '4': { class_type: 'RepeatImageBatch', inputs: { image: ['3', 0], amount: 8 } },
      '5': {
        class_type: 'SaveAnimatedWEBP',
        inputs: {
          images: ['4', 0],
          filename_prefix: 'gpu-jobs-real/anim',
          fps: 8,
          lossless: false,
          quality: 80,
          method: 'default',
        },
      },
      '6': { class_type: 'CreateVideo', inputs: { images: ['4', 0], fps: 8 } },
      '7': {
        class_type: 'SaveVideo',
        inputs: { video: ['6', 0], filename_prefix: 'gpu-jobs-real/mp4', format: 'mp4', codec: 'h264' },
      },
    }
    const { json } = await stack.post({
      type: 'render_video',
      params: { engine: 'comfyui', workflow: graph },
    })
    const jobId = json.jobId as string
    const done = await stack.waitStatus(jobId, ['completed', 'failed', 'cancelled'], 120_000)
    expect(done.error ?? null).toBeNull()
    expect(done.status).toBe('completed')
    const types = Object.fromEntries(done.artifacts.map((a) => [path.extname(a.path), a.contentType]))
    expect(types).toMatchObject({ '.mp4': 'video/mp4', '.webp': 'image/webp', '.json': 'application/json' })
    const mp4 = done.artifacts.find((a) => a.path.endsWith('.mp4'))?.path as string
    const p = await probeArtifact(jobId, mp4)
    expect(p.streams[0]).toMatchObject({ codec_name: 'h264', width: 160, height: 120, nb_read_frames: '16' })
    console.log(`[real comfyui] inline job ${jobId}: ${Date.now() - started} ms submit-to-completed`)
  })

  it('a cancel mid-run interrupts the prompt: ComfyUI runs nothing and has nothing queued afterwards', async () => {
    const { json } = await stack.post({
      type: 'render_video',
      params: { engine: 'comfyui', workflow: slowGraph(0x101010 + (Date.now() % 1000)) },
      maxAttempts: 1,
    })
    const jobId = json.jobId as string
    // Wait until ComfyUI runs one of the noise nodes, then cancel through the gateway.
    await waitFor(
      async () => {
        const res = await fetch(stack.url(`/api/status/${jobId}`))
        const body = (await res.json()) as { message?: string; status: string }
        return body.status === 'running' && /ImageAddNoise/.test(body.message ?? '')
      },
      120_000,
      'the job to run an ImageAddNoise node',
    )
    const cancelledAt = Date.now()
    const cancel = await fetch(stack.url(`/api/jobs/${jobId}/cancel`), { method: 'POST' })
    expect(cancel.status).toBeLessThan(300)
    const end = await stack.waitStatus(jobId, ['completed', 'failed', 'cancelled'], 60_000)
    expect(end.status).toBe('cancelled')
    // Read at the moment the job says cancelled.
    expect(await comfyQueue()).toEqual({ running: [], pending: [] })
    console.log(`[real comfyui] cancel of ${jobId}: ${Date.now() - cancelledAt} ms cancel-to-cancelled`)
  })

  it('a cancel while pending deletes the prompt from the queue; it never runs', async () => {
    // Occupy ComfyUI with a prompt of our own (straight over HTTP), so the job's prompt waits behind it.
    const base = `${COMFYUI_URL?.replace(/\/$/, '')}/`
    const blocker = (await (
      await fetch(new URL('prompt', base), {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({
          prompt: slowGraph(0x202020 + (Date.now() % 1000)),
          client_id: 'real-test-blocker',
        }),
      })
    ).json()) as { prompt_id: string }
    try {
      const { json } = await stack.post({
        type: 'render_video',
        params: { engine: 'comfyui', workflow: slowGraph(0x303030 + (Date.now() % 1000)) },
        maxAttempts: 1,
      })
      const jobId = json.jobId as string
      const ours = await waitFor(
        async () => {
          const q = await comfyQueue()
          return q.pending.length > 0 && q.running.includes(blocker.prompt_id) ? q.pending[0] : null
        },
        60_000,
        'the job prompt to be pending behind the blocker',
      )
      const cancel = await fetch(stack.url(`/api/jobs/${jobId}/cancel`), { method: 'POST' })
      expect(cancel.status).toBeLessThan(300)
      const end = await stack.waitStatus(jobId, ['completed', 'failed', 'cancelled'], 60_000)
      expect(end.status).toBe('cancelled')
      const q = await comfyQueue()
      expect(q.pending).not.toContain(ours)
      expect(q.running).not.toContain(ours)
      const history = (await (await fetch(new URL(`history/${ours}`, base))).json()) as Record<
        string,
        unknown
      >
      expect(history).toEqual({})
    } finally {
      await fetch(new URL('interrupt', base), {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ prompt_id: blocker.prompt_id }),
      })
      await waitFor(async () => (await comfyQueue()).running.length === 0, 60_000, 'ComfyUI to be idle')
    }
  })
})
