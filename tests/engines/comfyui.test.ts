import { createHash } from 'node:crypto'
import { once } from 'node:events'
import { readFileSync } from 'node:fs'
import { createServer } from 'node:http'
import type { AddressInfo } from 'node:net'
import { afterEach, describe, expect, it } from 'vitest'
import WebSocket from 'ws'
import { runComfyPrompt } from '../../functions/render_video/comfyui/index.ts'
import renderVideo, { WORKFLOW_FILE } from '../../functions/render_video/index.ts'
import { NonRetryableError, RetryableError } from '../../functions/sdk/errors.ts'
import { createTestContext, runHandler, type TestContext } from '../../functions/sdk/testing.ts'
import { expectProgressToEndAt100, rejectionOf } from '../../functions/test-support.ts'
import { ComfyStandin, type StandinOptions, T02_OUTPUTS, TRANSCRIPTS_DIR } from './comfyui-standin.ts'

/**
 * render_video's `comfyui` engine against the stand-in ComfyUI, which replays the recorded transcripts
 * (tests/engines/comfyui-standin.ts): the handler runs as the GPU host runs it, through createTestContext.
 */

const T01 = 't01_image_success_then_cached.jsonl'
const T02 = 't02_video_webp_apng_webm_mp4.jsonl'
const T03 = 't03_runtime_error.jsonl'
const T04 = 't04_validation_errors.jsonl'
const T05 = 't05_progress_ws_images.jsonl'
const T06 = 't06_interrupt.jsonl'
const T07 = 't07_queue_delete_front_interrupt.jsonl'

const cleanups: (() => Promise<void>)[] = []
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c()
})

async function standin(opts: StandinOptions): Promise<ComfyStandin> {
  const s = await ComfyStandin.start(opts)
  cleanups.push(() => s.close())
  return s
}

async function context(comfyuiUrl: string, jobId = 'comfy-job-1'): Promise<TestContext> {
  const t = await createTestContext({ type: 'render_video', jobId, comfyuiUrl })
  cleanups.push(() => t.cleanup())
  return t
}

/** A stand-in replaying `opts.transcript`, a context pointed at it, and a run of render_video on the graph it recorded at `graph`. */
async function replaying(opts: StandinOptions, graph = opts.startAt ?? 0) {
  const s = await standin(opts)
  const t = await context(s.url)
  const run = () => runHandler(renderVideo, { engine: 'comfyui', workflow: s.graphOf(graph) }, t)
  return { s, t, run }
}

const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex')
const viewFile = (name: string) => readFileSync(new URL(`view_${name}`, TRANSCRIPTS_DIR))

/** Aborts the context once `when()` resolves, with `reason`. */
function abortWhen(t: TestContext, when: Promise<void>, reason: Error): void {
  void when.then(() => t.abort(reason))
}

describe('the ComfyUI stand-in', () => {
  it.each([T01, T05])(
    'replays %s byte for byte: frames in order, HTTP status, headers and bodies',
    async (file) => {
      const s = await standin({ transcript: file, speed: 0 })
      const lines = readFileSync(new URL(file, TRANSCRIPTS_DIR), 'utf8')
        .split('\n')
        .filter(Boolean)
        .map((l) => JSON.parse(l) as Record<string, unknown>)
      // With the recorded client id, nothing is substituted at all.
      const ws = new WebSocket(`${s.url.replace('http', 'ws')}/ws?clientId=${s.recordedClient}`)
      const got: string[] = []
      ws.on('message', (data, binary) => {
        const b = Buffer.from(data as Buffer)
        got.push(binary ? `binary ${b.length} ${b.subarray(0, 16).toString('hex')}` : b.toString())
      })
      cleanups.push(async () => ws.terminate())
      await once(ws, 'open')
      const post = await fetch(`${s.url}/prompt`, {
        method: 'POST',
        body: JSON.stringify({ prompt: s.graphOf(0), client_id: s.recordedClient }),
      })
      const recordedPost = lines.find((l) => l.dir === 'http_res') as { headers: Record<string, string> }
      expect(post.status).toBe(200)
      expect(post.headers.get('content-type')).toBe(recordedPost.headers['Content-Type'])
      expect(post.headers.get('content-length')).toBe(recordedPost.headers['Content-Length'])
      expect(Buffer.from(await post.arrayBuffer()).equals(s.answerOf(0))).toBe(true)
      const promptId = (JSON.parse(s.answerOf(0).toString()) as { prompt_id: string }).prompt_id
      const end = `{"type": "executing", "data": {"node": null, "prompt_id": "${promptId}"}}`
      await expect.poll(() => got.includes(end), { timeout: 5000 }).toBe(true)
      const history = await fetch(`${s.url}/history/${promptId}`)
      expect(Buffer.from(await history.arrayBuffer()).equals(s.answerOf(1))).toBe(true)
      // Python's json.dumps spacing and floats (`0.0`, `1.0`) are kept, as ComfyUI sent them.
      expect(s.answerOf(1).toString()).toMatch(/^\{"[0-9a-f-]{36}": \{"prompt": \[/)
      const firstEnd = lines.findIndex((l) => l.dir === 'ws_text' && l.raw === end)
      const expected = lines
        .slice(0, firstEnd + 1)
        .filter((l) => l.dir === 'ws_text' || l.dir === 'ws_binary')
        .map((l) => (l.dir === 'ws_text' ? String(l.raw) : `binary ${l.length} ${l.head_hex}`))
      expect(got).toEqual(expected)
    },
  )
})

describe('render_video on ComfyUI (stand-in replaying the transcripts)', () => {
  it('t02: runs an inline video graph, streams all four outputs from /view with their content types', async () => {
    const { s, t, run } = await replaying({ transcript: T02 })
    const result = (await run()) as Record<string, unknown>
    expect(result).toMatchObject({
      engine: 'comfyui',
      simulated: false,
      promptId: '0e027229-d454-44a8-8add-40633a213cc7',
      workflow: 'inline',
      files: ['anim_00002_.webp', 'apng_00002_.png', 'webm_00002_.webm', 'mp4_00002_.mp4', WORKFLOW_FILE],
      cachedNodes: 0,
    })
    for (const [name, type] of T02_OUTPUTS) {
      const file = t.artifacts.files.get(name)
      expect(file?.record.contentType, name).toBe(type)
      expect(file?.record.sha256, name).toBe(sha256(viewFile(name)))
      expect(file?.record.key).toBe(`videos/comfy-job-1/${name}`)
    }
    expect(JSON.parse(t.artifacts.files.get(WORKFLOW_FILE)?.bytes.toString() ?? '')).toEqual(s.graphOf(0))
    // Every recorded request the client made was the recorded one, in a recorded order; nothing else.
    expect(s.unexpected).toEqual([])
    // (ComfyUI sends execution_success before it writes the history, so /history may be read twice.)
    const routes = s.requests.map((r) => `${r.method} ${r.path.split('?')[0]}`)
    expect(routes.filter((r, i) => !(r.startsWith('GET /history') && routes[i - 1] === r))).toEqual([
      'GET /ws',
      'POST /prompt',
      'GET /history/0e027229-d454-44a8-8add-40633a213cc7',
      'GET /view',
      'GET /view',
      'GET /view',
      'GET /view',
    ])
    // ComfyUI's origin check: no Origin header on any request, the WebSocket upgrade included.
    for (const r of s.requests) expect(r.headers.origin).toBeUndefined()
    // The prompt went to our socket's client id (ComfyUI routes the prompt's events by it).
    expect((s.requests[1]?.body as { client_id?: string } | undefined)?.client_id).toBe(s.connections[0])
  })

  it('t02: reports nodes done out of nodes to run, each message naming the node by class and id', async () => {
    const { t, run } = await replaying({ transcript: T02 })
    await run()
    expectProgressToEndAt100(t.progress)
    const messages = t.progress.map((p) => p.message ?? '')
    expect(messages).toContain('queued in ComfyUI as prompt 0e027229-d454-44a8-8add-40633a213cc7 (9 nodes)')
    // The recorded execution order (2, 1, 3, 4, ... 9), each node named.
    const nodes = messages.filter((m) => m.startsWith('node '))
    expect(nodes).toEqual([
      'node 1/9: EmptyImage #2',
      'node 2/9: EmptyImage #1',
      'node 3/9: ImageBatch #3',
      'node 4/9: RepeatImageBatch #4',
      'node 5/9: SaveAnimatedWEBP #5',
      'node 6/9: SaveAnimatedPNG #6',
      'node 7/9: SaveWEBM #7',
      'node 8/9: CreateVideo #8',
      'node 9/9: SaveVideo #9',
    ])
    const at = (m: string) => t.progress.find((p) => p.message === m)?.percent ?? Number.NaN
    // Node k of 9 starts when k-1 are done: 2 + 88 * (k-1)/9.
    expect(at('node 1/9: EmptyImage #2')).toBe(2)
    expect(at('node 5/9: SaveAnimatedWEBP #5')).toBeCloseTo(2 + (88 * 4) / 9, 1)
    expect(at('node 9/9: SaveVideo #9')).toBeCloseTo(2 + (88 * 8) / 9, 1)
  })

  it('t05: uses value/max inside a node and ignores the binary preview frames', async () => {
    const { s, t, run } = await replaying({ transcript: T05 })
    const result = (await run()) as {
      files: string[]
    }
    expect(s.binarySent).toBe(8)
    // SaveImageWebsocket sends its images over the socket only: /history lists no file.
    expect(result.files).toEqual([WORKFLOW_FILE])
    expect(t.logs.some((l) => l.level === 'warn' && l.msg.includes('no output files'))).toBe(true)
    const steps = t.progress.filter((p) => p.message?.startsWith('node 2/2: SaveImageWebsocket #2'))
    expect(steps.map((p) => p.message)).toEqual([
      'node 2/2: SaveImageWebsocket #2',
      ...[0, 1, 2, 3, 4, 5, 6, 7].map((i) => `node 2/2: SaveImageWebsocket #2 ${i}/8`),
    ])
    // One node of two done, plus i/8 of the second: 2 + 88 * (1 + i/8) / 2.
    expect(steps.at(-1)?.percent).toBeCloseTo(2 + (88 * (1 + 7 / 8)) / 2, 1)
    expectProgressToEndAt100(t.progress)
  })

  it('t01: an image graph: the PNG from /view, progress rising to 100 over the six nodes', async () => {
    const { s, t, run } = await replaying({ transcript: T01 })
    const result = (await run()) as Record<string, unknown>
    expect(result).toMatchObject({
      promptId: '50d816e8-c780-4d0d-9f30-5a09ede85003',
      files: ['img_00001_.png', WORKFLOW_FILE],
      cachedNodes: 0,
      outputs: [{ path: 'img_00001_.png', contentType: 'image/png', size: 965 }],
    })
    expect(t.artifacts.files.get('img_00001_.png')?.bytes.equals(viewFile('img_00001_.png'))).toBe(true)
    expectProgressToEndAt100(t.progress)
    expect(t.progress.filter((p) => p.message?.startsWith('node ')).map((p) => p.message)).toEqual([
      'node 1/6: EmptyImage #3',
      'node 2/6: EmptyImage #1',
      'node 3/6: ImageInvert #2',
      'node 4/6: ImageBlend #4',
      'node 5/6: ImageScale #5',
      'node 6/6: SaveImage #6',
    ])
    expect(s.unexpected).toEqual([])
  })

  it('t01: counts cached nodes as done and still fetches the cached outputs', async () => {
    const { s, t, run } = await replaying({ transcript: T01, startAt: 5 })
    const result = (await run()) as Record<string, unknown>
    expect(result).toMatchObject({ promptId: '754ce4e1-fc41-4d77-a821-90c9fd71b38f', cachedNodes: 6 })
    expect(t.progress.map((p) => p.message)).toContain('ComfyUI: 6 of 6 nodes cached')
    expect(t.progress.find((p) => p.message === 'ComfyUI: 6 of 6 nodes cached')?.percent).toBe(90)
    const png = t.artifacts.files.get('img_00001_.png')
    expect(png?.record).toMatchObject({
      contentType: 'image/png',
      sha256: sha256(viewFile('img_00001_.png')),
    })
    expect(s.unexpected).toEqual([])
  })

  it('t03: a runtime error fails the job naming the node, its type and the exception', async () => {
    const { t, run } = await replaying({ transcript: T03 })
    const err = await rejectionOf(run())
    expect(err).toBeInstanceOf(NonRetryableError)
    expect(err.code).toBe('COMFYUI_EXECUTION_ERROR')
    expect(err.message).toBe(
      `ComfyUI failed in node 3 (SaveVideo): av.error.ExternalError: [Errno 542398533] Generic error in an external library: 'avcodec_open2("libx264", {})'`,
    )
    expect(t.artifacts.files.size).toBe(0)
    expect(t.logs.find((l) => l.level === 'error')?.msg).toMatch(
      /^ComfyUI traceback of node 3:\n {2}File .*execution\.py/,
    )
  })

  it('t04: a 400 from /prompt is not retryable and names each node and input', async () => {
    const { run } = await replaying({ transcript: T04, startAt: 1 })
    const err = await rejectionOf(run())
    expect(err).toBeInstanceOf(NonRetryableError)
    expect(err).toMatchObject({ reason: 'invalid_params', code: 'COMFYUI_INVALID_PROMPT' })
    expect(err.message).toBe(
      'ComfyUI refused the workflow: ' +
        'params.workflow.1.inputs.width (EmptyImage): Required input is missing [required_input_missing]; ' +
        'params.workflow.3.inputs.height (EmptyImage): Value 0 smaller than min of 1 [value_smaller_than_min]; ' +
        'params.workflow.5.inputs.upscale_method (ImageScale): Value not in list [value_not_in_list]',
    )
    // The rejected value ('xx') is not echoed.
    expect(err.message).not.toContain("'xx'")
  })

  it('t04: an inner validation exception and an unknown node class are named too', async () => {
    const { run } = await replaying({ transcript: T04, startAt: 3 })
    const err = await rejectionOf(run())
    expect(err.message).toBe(
      'ComfyUI refused the workflow: params.workflow.4.inputs.image (ImageBlend): Exception when validating inner node: tuple index out of range [exception_during_inner_validation]',
    )
    // The gateway refuses a graph without an output node, so an unknown class alone reaches ComfyUI only
    // through the driver: the same error vocabulary.
    const s0 = await standin({ transcript: T04 })
    const t0 = await context(s0.url)
    const err0 = await rejectionOf(runComfyPrompt(t0.ctx, s0.graphOf(0) as never, ['1']))
    expect(err0).toBeInstanceOf(NonRetryableError)
    expect(err0.message).toBe(
      'ComfyUI refused the workflow: params.workflow.1: Cannot execute because node NoSuchNode does not exist. [invalid_prompt]',
    )
  })

  it('t06: cancel while running interrupts the prompt and waits for it to stop, leaving ComfyUI idle', async () => {
    const { s, t, run } = await replaying({ transcript: T06, others: [1] })
    const reason = new Error('job cancelled')
    abortWhen(t, s.reached(2), reason)
    const started = Date.now()
    const err = await rejectionOf(run())
    expect(err).toBe(reason)
    const posts = s.requests.filter((r) => r.method === 'POST').map((r) => [r.path, r.body])
    expect(posts).toEqual([
      ['/prompt', expect.anything()],
      ['/interrupt', { prompt_id: 'b0081cf3-f521-4140-90a1-b6fcf8423d53' }],
    ])
    // The interrupt lands at the next node boundary (1.7 s later in the recording); the job waited for it.
    expect(Date.now() - started).toBeGreaterThan(1500)
    await expect.poll(() => s.idle, { timeout: 1000 }).toBe(true)
    expect(t.artifacts.files.size).toBe(0)
    expect(s.unexpected).toEqual([])
  })

  it('t06: a timeout takes the same path (interrupt, wait) and rejects with the timeout', async () => {
    const { s, t, run } = await replaying({ transcript: T06, others: [1], speed: 0.3 })
    const reason = Object.assign(new Error('job timeout'), { name: 'AbortError', reason: 'timeout' })
    abortWhen(t, s.reached(2), reason)
    const err = await rejectionOf(run())
    expect(err).toBe(reason)
    expect(s.requests.some((r) => r.path === '/interrupt')).toBe(true)
    await expect.poll(() => s.idle, { timeout: 1000 }).toBe(true)
  })

  it('t07: cancel while pending deletes the prompt from the queue; it never runs', async () => {
    // Prompts 0 and 2 (front) were another client's; ours is request 1, pending behind them.
    const { s, t, run } = await replaying({ transcript: T07, others: [0, 2, 6] }, 1)
    const reason = new Error('job cancelled')
    abortWhen(t, s.reached(3), reason)
    const err = await rejectionOf(run())
    expect(err).toBe(reason)
    const posts = s.requests.filter((r) => r.method === 'POST').map((r) => [r.path, r.body])
    expect(posts).toEqual([
      ['/prompt', expect.anything()],
      ['/queue', { delete: ['a96117ee-ac0b-4d1d-87f8-ce2478b73a9b'] }],
    ])
    // The second /queue read (recorded) no longer lists it: nothing of ours is queued or running.
    const after = JSON.parse(s.answerOf(5).toString()) as {
      queue_running: unknown[][]
      queue_pending: unknown[][]
    }
    const ids = [...after.queue_running, ...after.queue_pending].map((i) => i[1])
    expect(ids).not.toContain('a96117ee-ac0b-4d1d-87f8-ce2478b73a9b')
    expect(s.requests.filter((r) => r.path === '/queue' && r.method === 'GET')).toHaveLength(2)
    expect(t.progress.some((p) => p.message?.startsWith("waiting in ComfyUI's queue"))).toBe(true)
    expect(s.unexpected).toEqual([])
  })

  it('survives a WebSocket drop: reconnects with the same client id and finds the end in /history', async () => {
    // Dropped after SaveVideo starts: the rest (executed, execution_success, executing null) is lost.
    const { s, t, run } = await replaying({
      transcript: T02,
      speed: 0.05,
      dropAfter: (raw) => raw.includes('"node": "9"'),
    })
    const result = (await run()) as {
      files: string[]
    }
    expect(s.framesLost).toBeGreaterThan(0)
    expect(s.connections.length).toBeGreaterThanOrEqual(2)
    expect(new Set(s.connections).size).toBe(1)
    expect(result.files).toContain('mp4_00002_.mp4')
    expect(t.logs.some((l) => l.msg.includes('reconnected'))).toBe(true)
  })

  it('ComfyUI down: a retryable error naming ComfyUI and COMFYUI_URL, without its credentials', async () => {
    const closed = createServer()
    await new Promise<void>((r) => closed.listen(0, '127.0.0.1', r))
    const port = (closed.address() as AddressInfo).port
    await new Promise<void>((r) => closed.close(() => r()))
    const t = await context(`http://operator:s3cret@127.0.0.1:${port}`)
    const err = await rejectionOf(runHandler(renderVideo, { engine: 'comfyui', workflow: 'smoke' }, t))
    expect(err).toBeInstanceOf(RetryableError)
    expect(err.message).toMatch(new RegExp(`^ComfyUI at COMFYUI_URL=http://127.0.0.1:${port} .*ECONNREFUSED`))
    expect(err.message).not.toContain('s3cret')
    expect(err.message).not.toContain('operator')
  })

  it('ComfyUI restarting (a proxy answering 503): retryable', async () => {
    const server = createServer((_req, res) => {
      res.writeHead(503).end('restarting')
    })
    server.on('upgrade', (_req, socket) => {
      socket.end('HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n')
    })
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
    cleanups.push(() => new Promise((r) => server.close(() => r())))
    const t = await context(`http://127.0.0.1:${(server.address() as AddressInfo).port}`)
    const err = await rejectionOf(runHandler(renderVideo, { engine: 'comfyui', workflow: 'smoke' }, t))
    expect(err).toBeInstanceOf(RetryableError)
    expect(err.message).toMatch(/^ComfyUI at COMFYUI_URL=.* refused the WebSocket \/ws .*503/)
  })

  it('ComfyUI gone mid-run: the job does not hang; retryable once it is down past the bound', async () => {
    const s = await standin({ transcript: T06, others: [1] })
    const t = await context(s.url)
    void s.reached(2).then(() => s.close())
    const started = Date.now()
    const err = await rejectionOf(
      runComfyPrompt(t.ctx, s.graphOf(0) as never, ['2'], {
        timings: { maxDownMs: 1500, pollMs: 200, pollWhileDownMs: 200 },
      }),
    )
    expect(err).toBeInstanceOf(RetryableError)
    expect(err.message).toMatch(/^ComfyUI at COMFYUI_URL=http:\/\/127\.0\.0\.1:\d+ /)
    expect(Date.now() - started).toBeLessThan(10_000)
  })
})
