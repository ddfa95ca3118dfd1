import { createHash } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { afterAll, afterEach, describe, expect, it } from 'vitest'
import { type Stack, startStack } from '../helpers/stack.ts'
import { ComfyStandin, type StandinOptions, T02_OUTPUTS, TRANSCRIPTS_DIR } from './comfyui-standin.ts'

/**
 * render_video with engine `comfyui` through the whole system: gateway, Redis, GPU host, a fresh job
 * process, the stand-in ComfyUI (replaying the transcripts) at COMFYUI_URL, S3.
 */

const T02 = 't02_video_webp_apng_webm_mp4.jsonl'
const T06 = 't06_interrupt.jsonl'

let stack: Stack | undefined
const standins: ComfyStandin[] = []
afterEach(async () => {
  await stack?.close()
  stack = undefined
})
afterAll(async () => {
  for (const s of standins) await s.close()
})

/**
 * A stand-in replaying `opts.transcript`, a stack whose COMFYUI_URL is it (fixed at start, so each test has
 * a stack of its own), and render_video of the graph it recorded submitted through the gateway with `extra`.
 */
async function submitRecorded(opts: StandinOptions, extra: Record<string, unknown> = {}) {
  const s = await ComfyStandin.start(opts)
  standins.push(s)
  // KILL_GRACE_SEC: the time a cancelled job process has to interrupt ComfyUI and see it stop.
  const st = await startStack({ env: { COMFYUI_URL: s.url, KILL_GRACE_SEC: '10' } })
  stack = st
  const { status, json } = await st.post({
    type: 'render_video',
    params: { engine: 'comfyui', workflow: s.graphOf(0) },
    ...extra,
  })
  const jobId = json.jobId as string
  const ended = (timeoutMs: number) => st.waitStatus(jobId, ['completed', 'failed', 'cancelled'], timeoutMs)
  return { s, stack: st, status, jobId, ended }
}

const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex')

describe('render_video engine comfyui through the stack (stand-in ComfyUI)', () => {
  it('t02: a gateway submission ends completed with the four outputs in the bucket, typed', async () => {
    const { s, stack, status, jobId, ended } = await submitRecorded({ transcript: T02 })
    expect(status).toBe(202)
    const done = await ended(60_000)
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
    for (const [name, type] of T02_OUTPUTS) {
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
  })

  it('t06: a cancel through the gateway interrupts the running prompt; ComfyUI is idle when the job says cancelled', async () => {
    const { s, stack, jobId, ended } = await submitRecorded({ transcript: T06, others: [1] })
    await s.reached(2)
    const cancel = await fetch(stack.url(`/api/jobs/${jobId}/cancel`), { method: 'POST' })
    expect(cancel.status).toBeLessThan(300)
    const end = await ended(30_000)
    expect(end.status).toBe('cancelled')
    // Checked at the moment the job reads cancelled, not after a wait.
    expect(s.idle).toBe(true)
    expect(s.requests.filter((r) => r.path === '/interrupt').map((r) => r.body)).toEqual([
      { prompt_id: 'b0081cf3-f521-4140-90a1-b6fcf8423d53' },
    ])
    expect(s.unexpected).toEqual([])
  })

  it('t06: a timeout through the host interrupts the prompt the same way (failed, reason timeout)', async () => {
    // The recording reaches node 3 at 0.76 s after the prompt and then waits for the client's GET /queue:
    // a 5 s timeout lands there even when a loaded machine takes seconds to start the job process (an
    // abort before it would be a request the recording does not have, flagged in `unexpected`).
    const { s, ended } = await submitRecorded(
      { transcript: T06, others: [1] },
      { timeoutSec: 5, maxAttempts: 1 },
    )
    const end = await ended(30_000)
    expect(end.status).toBe('failed')
    expect(end.error?.reason).toBe('timeout')
    expect(s.idle).toBe(true)
    expect(s.requests.some((r) => r.path === '/interrupt')).toBe(true)
    expect(s.unexpected).toEqual([])
  })
})
