import { createHash } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { afterAll, describe, expect, it } from 'vitest'
import { postJob, type Stack, startStack, waitStatus } from '../helpers/stack.ts'
import { ComfyStandin, TRANSCRIPTS_DIR } from './comfyui-standin.ts'

/**
 * render_video with engine `comfyui` through the whole system: gateway, Redis, GPU host, a fresh job
 * process, the stand-in ComfyUI (replaying the transcripts) at COMFYUI_URL, S3.
 */

const T02 = 't02_video_webp_apng_webm_mp4.jsonl'
const T06 = 't06_interrupt.jsonl'

let stack: Stack
const standins: ComfyStandin[] = []
afterAll(async () => {
  for (const s of standins) await s.close()
})

/** A stack whose COMFYUI_URL is `s` (fixed at start, so each test has a stack of its own). */
async function stackFor(s: ComfyStandin): Promise<Stack> {
  standins.push(s)
  // KILL_GRACE_SEC: the time a cancelled job process has to interrupt ComfyUI and see it stop.
  return startStack({ env: { COMFYUI_URL: s.url, KILL_GRACE_SEC: '10' } })
}

const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex')

describe('render_video engine comfyui through the stack (stand-in ComfyUI)', () => {
  it('t02: a gateway submission ends completed with the four outputs in the bucket, typed', async () => {
    const s = await ComfyStandin.start({ transcript: T02 })
    stack = await stackFor(s)
    try {
      const { status, json } = await postJob(stack, {
        type: 'render_video',
        params: { engine: 'comfyui', workflow: s.graphOf(0) },
      })
      expect(status).toBe(202)
      const jobId = json.jobId as string
      const done = await waitStatus(stack, jobId, ['completed', 'failed', 'cancelled'], 60_000)
      expect(done.error ?? null).toBeNull()
      expect(done.status).toBe('completed')
      expect(done.result).toMatchObject({
        engine: 'comfyui',
        promptId: '0e027229-d454-44a8-8add-40633a213cc7',
      })
      const res = await fetch(stack.url(`/api/jobs/${jobId}/artifacts`))
      const { artifacts } = (await res.json()) as {
        artifacts: { path: string; key: string; contentType: string; sha256: string; url: string }[]
      }
      const byPath = Object.fromEntries(artifacts.map((a) => [a.path, a]))
      const expected: [string, string][] = [
        ['anim_00002_.webp', 'image/webp'],
        ['apng_00002_.png', 'image/png'],
        ['webm_00002_.webm', 'video/webm'],
        ['mp4_00002_.mp4', 'video/mp4'],
      ]
      for (const [name, type] of expected) {
        const a = byPath[name]
        expect(a, name).toBeDefined()
        expect(a?.key).toBe(`videos/${jobId}/${name}`)
        expect(a?.contentType).toBe(type)
        const recorded = readFileSync(new URL(`view_${name}`, TRANSCRIPTS_DIR))
        expect(a?.sha256).toBe(sha256(recorded))
        // The bytes in the bucket are the bytes ComfyUI's /view sent, with the content type kept.
        const download = await fetch(stack.url(`/api/jobs/${jobId}/artifacts/${name}`))
        expect(download.headers.get('content-type')).toBe(type)
        expect(Buffer.from(await download.arrayBuffer()).equals(recorded)).toBe(true)
      }
      expect(byPath['workflow.json']?.contentType).toBe('application/json')
      expect(s.unexpected).toEqual([])
      for (const r of s.requests) expect(r.headers.origin).toBeUndefined()
    } finally {
      await stack.close()
    }
  })

  it('t06: a cancel through the gateway interrupts the running prompt; ComfyUI is idle when the job says cancelled', async () => {
    const s = await ComfyStandin.start({ transcript: T06, others: [1] })
    stack = await stackFor(s)
    try {
      const { json } = await postJob(stack, {
        type: 'render_video',
        params: { engine: 'comfyui', workflow: s.graphOf(0) },
      })
      const jobId = json.jobId as string
      await s.reached(2)
      const cancel = await fetch(stack.url(`/api/jobs/${jobId}/cancel`), { method: 'POST' })
      expect(cancel.status).toBeLessThan(300)
      const end = await waitStatus(stack, jobId, ['completed', 'failed', 'cancelled'], 30_000)
      expect(end.status).toBe('cancelled')
      // Checked at the moment the job reads cancelled, not after a wait.
      expect(s.idle).toBe(true)
      expect(s.requests.filter((r) => r.path === '/interrupt').map((r) => r.body)).toEqual([
        { prompt_id: 'b0081cf3-f521-4140-90a1-b6fcf8423d53' },
      ])
      expect(s.unexpected).toEqual([])
    } finally {
      await stack.close()
    }
  })

  it('t06: a timeout through the host interrupts the prompt the same way (failed, reason timeout)', async () => {
    const s = await ComfyStandin.start({ transcript: T06, others: [1] })
    stack = await stackFor(s)
    try {
      // The recording reaches node 3 at 0.76 s after the prompt and then waits for the client's GET /queue:
      // a 5 s timeout lands there even when a loaded machine takes seconds to start the job process (an
      // abort before it would be a request the recording does not have, flagged in `unexpected`).
      const { json } = await postJob(stack, {
        type: 'render_video',
        params: { engine: 'comfyui', workflow: s.graphOf(0) },
        timeoutSec: 5,
        maxAttempts: 1,
      })
      const jobId = json.jobId as string
      const end = await waitStatus(stack, jobId, ['completed', 'failed', 'cancelled'], 30_000)
      expect(end.status).toBe('failed')
      expect(end.error?.reason).toBe('timeout')
      expect(s.idle).toBe(true)
      expect(s.requests.some((r) => r.path === '/interrupt')).toBe(true)
      expect(s.unexpected).toEqual([])
    } finally {
      await stack.close()
    }
  })
})
