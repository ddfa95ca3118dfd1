/**
 * A stand-in ComfyUI for CI: a real HTTP + WebSocket server on a free port that replays one of the
 * recorded transcripts (tests/engines/transcripts/comfyui/, copied from shared/reference/engine-transcripts:
 * what ComfyUI 0.3.64 really sent). The recorded WebSocket text frames go out byte for byte in their
 * recorded order and with their recorded gaps (times `speed`); HTTP answers carry the recorded status,
 * headers and body bytes; /view serves the recorded files. Nothing is invented except where the recording
 * cannot hold it, each noted where it is done: the `sid` of the connect-time `status` frame is the
 * connecting client's id (as ComfyUI does), the bytes of binary preview frames past the recorded 16-byte
 * head, and a reconnect's `executing` re-send (server.py's own shape).
 *
 * The transcript is a timeline. Each recorded request is either the client's (the stand-in waits at it
 * until the client makes it: same method, path and body, `client_id` being the client's WebSocket id) or
 * another client's (listed in `others`: the stand-in plays it itself). A request's answer is sent when the
 * timeline reaches its recorded answer, so frames recorded between a request and its answer come first.
 * Requests that are not the next on the timeline get what ComfyUI would answer at that point: a recorded
 * request in the same run of HTTP lines (downloads in another order), an idle /queue or an unknown
 * /history id as recorded elsewhere, a recorded /view file, or aiohttp's 404.
 */
import { readFileSync } from 'node:fs'
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { isDeepStrictEqual } from 'node:util'
import { type WebSocket, WebSocketServer } from 'ws'

export const TRANSCRIPTS_DIR = new URL('./transcripts/comfyui/', import.meta.url)

/** The four files transcript t02's video graph makes, streamed from /view, and their content types. */
export const T02_OUTPUTS: readonly [name: string, contentType: string][] = [
  ['anim_00002_.webp', 'image/webp'],
  ['apng_00002_.png', 'image/png'],
  ['webm_00002_.webm', 'video/webm'],
  ['mp4_00002_.mp4', 'video/mp4'],
]

type Line =
  | { t: number; dir: 'ws_text'; raw: string }
  | { t: number; dir: 'ws_binary'; length: number; head_hex: string }
  | { t: number; dir: 'http_req'; method: string; path: string; body: unknown }
  | {
      t: number
      dir: 'http_res'
      method: string
      path: string
      status: number
      headers: Record<string, string>
      text?: string
      bytes?: number
      saved_to?: string
    }
  | { t: number; dir: 'note'; client_id?: string }

interface Exchange {
  /** Index of the request among the transcript's requests (0-based), as `startAt` and `others` count. */
  n: number
  reqLine: number
  resLine: number
  method: string
  path: string
  body: unknown
  status: number
  headers: Record<string, string>
  /** The recorded body bytes (JSON exactly as ComfyUI serialised it, a /view file, or empty). */
  bytes: Buffer
}

export interface RecordedRequest {
  method: string
  path: string
  headers: IncomingMessage['headers']
  body: unknown
  /** Which recorded request answered it (its `n`), or how: `fallback`, `unexpected`. */
  answeredBy: number | 'fallback' | 'unexpected'
}

export interface StandinOptions {
  /** A file in tests/engines/transcripts/comfyui/, e.g. `t02_video_webp_apng_webm_mp4.jsonl`. */
  transcript: string
  /** Start the timeline at this request (skipping what came before it, e.g. t01's second, cached run). */
  startAt?: number
  /** Requests another client made: the stand-in plays them itself. */
  others?: number[]
  /** Factor on the recorded gaps between frames: 1 as recorded, 0 at once. */
  speed?: number
  /** Closes the client's WebSocket right after sending the first frame this matches. */
  dropAfter?: (raw: string) => boolean
}

/** Python's `json.dumps` of server.py's reconnect message, for a node id (digits and `:` only in practice). */
const executingResend = (node: string) => `{"type": "executing", "data": {"node": ${JSON.stringify(node)}}}`

/** The bytes of the answer recorded on `line` of `file`: its `json` exactly as sent, a saved file, or nothing. */
function recordedBody(lineText: string, line: Extract<Line, { dir: 'http_res' }>): Buffer {
  const key = ', "json": '
  const at = lineText.indexOf(key)
  if (at >= 0) {
    // The capture wrote each line with Python's json.dumps, the same serialiser as ComfyUI's
    // web.json_response, and `json` last: its text is the body's bytes (checked against Content-Length).
    const raw = Buffer.from(lineText.slice(at + key.length, lineText.lastIndexOf('}')))
    const length = Number(line.headers['Content-Length'])
    if (raw.length !== length)
      throw new Error(`transcript body of ${line.path}: ${raw.length} bytes, not ${length}`)
    return raw
  }
  if (line.saved_to) return readFileSync(new URL(path.basename(line.saved_to), TRANSCRIPTS_DIR))
  return Buffer.from(line.text ?? '')
}

const parseQuery = (p: string) => {
  const u = new URL(p, 'http://x')
  return { pathname: u.pathname.replace(/^\/api\//, '/'), query: [...u.searchParams].sort() }
}
const samePath = (a: string, b: string) => isDeepStrictEqual(parseQuery(a), parseQuery(b))

export class ComfyStandin {
  readonly requests: RecordedRequest[] = []
  /** Timeline frames sent to a connected client, and those that went nowhere (no socket connected). */
  framesSent = 0
  framesLost = 0
  binarySent = 0
  /** Client ids of every WebSocket connection, in order. */
  readonly connections: string[] = []
  /** What ComfyUI's state is by the frames sent: the running prompt and the last queue_remaining. */
  running: string | null = null
  queueRemaining = 0

  private readonly lines: Line[]
  private readonly exchanges: Exchange[]
  private readonly sidFrame: string | undefined
  private readonly recordedClientId: string | undefined
  private readonly sockets = new Set<WebSocket>()
  private readonly wss = new WebSocketServer({ noServer: true })
  private readonly server: Server
  private cursor = 0
  private waiting: { ex: Exchange; resolve: (req: RecordedRequest) => void } | null = null
  private readonly consumed = new Set<number>()
  private readonly heldAnswers = new Map<number, ServerResponse>()
  private lastExecuting: string | null = null
  private dropped = false
  private closed = false
  private readonly reachedWaiters: { n: number; resolve: () => void }[] = []
  private pumpDone: Promise<void> | undefined
  url = ''

  private constructor(private readonly opts: StandinOptions) {
    const parsed = loadTranscript(opts.transcript)
    this.lines = parsed.lines
    this.exchanges = parsed.exchanges
    const note = this.lines.find((l) => l.dir === 'note' && l.client_id)
    this.recordedClientId = note?.dir === 'note' ? note.client_id : undefined
    const sid = this.lines.find((l) => l.dir === 'ws_text' && l.raw.includes('"sid": '))
    this.sidFrame = sid?.dir === 'ws_text' ? sid.raw : undefined
    const start = opts.startAt === undefined ? undefined : this.exchanges[opts.startAt]
    if (opts.startAt !== undefined && !start)
      throw new Error(`${opts.transcript} has no request ${opts.startAt}`)
    this.cursor = start?.reqLine ?? 0
    this.server = createServer((req, res) => {
      void this.onRequest(req, res)
    })
    this.server.on('upgrade', (req, socket, head) => {
      const url = new URL(req.url ?? '/', 'http://x')
      if (url.pathname !== '/ws' && url.pathname !== '/api/ws') return socket.destroy()
      this.requests.push({
        method: 'GET',
        path: req.url ?? '',
        headers: req.headers,
        body: null,
        answeredBy: 'fallback',
      })
      this.wss.handleUpgrade(req, socket, head, (ws) =>
        this.onSocket(ws, url.searchParams.get('clientId') ?? ''),
      )
    })
  }

  /** Starts a stand-in on a free loopback port; `url` is its COMFYUI_URL. */
  static async start(opts: StandinOptions): Promise<ComfyStandin> {
    const s = new ComfyStandin(opts)
    await new Promise<void>((resolve) => s.server.listen(0, '127.0.0.1', resolve))
    s.url = `http://127.0.0.1:${(s.server.address() as AddressInfo).port}`
    s.pumpDone = s.pump()
    return s
  }

  /** The recorded client id: a client using it gets the recorded frames with no substitution at all. */
  get recordedClient(): string | undefined {
    return this.recordedClientId
  }

  /** The recorded `prompt` graph of request `n` (a POST /prompt). */
  graphOf(n: number): Record<string, { class_type: string; inputs: Record<string, unknown> }> {
    const body = this.exchanges[n]?.body as { prompt?: unknown } | undefined
    if (!body?.prompt)
      throw new Error(`request ${n} of ${this.opts.transcript} is not a POST /prompt with a graph`)
    return body.prompt as Record<string, { class_type: string; inputs: Record<string, unknown> }>
  }

  /** The recorded answer bytes of request `n`. */
  answerOf(n: number): Buffer {
    const ex = this.exchanges[n]
    if (!ex) throw new Error(`no request ${n}`)
    return ex.bytes
  }

  /** Resolves once the timeline is waiting for the client's request `n` (or has passed it). */
  reached(n: number): Promise<void> {
    if (this.waiting && this.waiting.ex.n >= n) return Promise.resolve()
    if (this.exchanges[n] && this.cursor > (this.exchanges[n] as Exchange).reqLine) return Promise.resolve()
    return new Promise((resolve) => this.reachedWaiters.push({ n, resolve }))
  }

  /** True when ComfyUI, by the frames sent, runs nothing and has nothing queued. */
  get idle(): boolean {
    return this.running === null && this.queueRemaining === 0
  }

  /** Requests that no recorded exchange or ComfyUI rule answered. */
  get unexpected(): RecordedRequest[] {
    return this.requests.filter((r) => r.answeredBy === 'unexpected')
  }

  /** Stops listening and closes every socket (ComfyUI gone). */
  async close(): Promise<void> {
    this.closed = true
    for (const ws of this.sockets) ws.terminate()
    for (const res of this.heldAnswers.values()) res.destroy()
    this.waiting = null
    this.server.closeAllConnections()
    await new Promise<void>((resolve) => this.server.close(() => resolve()))
    this.wss.close()
  }

  private onSocket(ws: WebSocket, clientId: string): void {
    this.connections.push(clientId)
    this.sockets.add(ws)
    ws.on('close', () => this.sockets.delete(ws))
    ws.on('error', () => {})
    // server.py: `status` with the connection's sid first, then the running node again on a reconnect.
    if (this.sidFrame) {
      const raw =
        this.recordedClientId && clientId !== this.recordedClientId
          ? this.sidFrame.replace(JSON.stringify(this.recordedClientId), JSON.stringify(clientId))
          : this.sidFrame
      ws.send(raw)
    }
    if (this.running !== null && this.lastExecuting !== null) ws.send(executingResend(this.lastExecuting))
  }

  private track(raw: string): void {
    const event = JSON.parse(raw) as { type: string; data: Record<string, unknown> }
    if (event.type === 'status')
      this.queueRemaining = (
        event.data.status as { exec_info: { queue_remaining: number } }
      ).exec_info.queue_remaining
    if (event.type === 'execution_start') this.running = event.data.prompt_id as string
    if (event.type === 'executing') {
      if (event.data.node === null) {
        if (this.running === event.data.prompt_id) this.running = null
        this.lastExecuting = null
      } else this.lastExecuting = event.data.node as string
    }
  }

  private send(data: string | Buffer, binary: boolean): void {
    if (this.sockets.size === 0) {
      this.framesLost++
      return
    }
    for (const ws of this.sockets) ws.send(data, { binary })
    this.framesSent++
    if (binary) this.binarySent++
    if (!binary && !this.dropped && this.opts.dropAfter?.(data as string)) {
      this.dropped = true
      for (const ws of this.sockets) ws.terminate()
      this.sockets.clear()
    }
  }

  private async pump(): Promise<void> {
    const speed = this.opts.speed ?? 1
    let lastT = this.lines[this.cursor]?.t ?? 0
    const others = new Set(this.opts.others ?? [])
    for (; this.cursor < this.lines.length && !this.closed; this.cursor++) {
      const line = this.lines[this.cursor] as Line
      if (line.dir === 'ws_text' || line.dir === 'ws_binary') {
        const gap = (line.t - lastT) * speed * 1000
        lastT = line.t
        await sleep(Math.max(0, gap))
        if (this.closed) return
        if (line.dir === 'ws_text') {
          if (line.raw === this.sidFrame) continue // sent on each connect instead
          this.track(line.raw)
          this.send(line.raw, false)
        } else {
          // Only the first 16 bytes of a preview were recorded: the rest is zeros, at the recorded length.
          const frame = Buffer.alloc(line.length)
          Buffer.from(line.head_hex, 'hex').copy(frame)
          this.send(frame, true)
        }
        continue
      }
      if (line.dir === 'http_res') {
        const ex = this.exchanges.find((e) => e.resLine === this.cursor)
        const held = ex && this.heldAnswers.get(ex.n)
        if (ex && held) {
          this.heldAnswers.delete(ex.n)
          this.answer(held, ex)
        }
        continue
      }
      if (line.dir !== 'http_req') continue
      const ex = this.exchanges.find((e) => e.reqLine === this.cursor) as Exchange
      if (others.has(ex.n) || this.consumed.has(ex.n)) continue
      lastT = line.t
      await new Promise<RecordedRequest>((resolve) => {
        this.waiting = { ex, resolve }
        for (const w of this.reachedWaiters.filter((w) => w.n <= ex.n)) w.resolve()
        this.reachedWaiters.splice(
          0,
          this.reachedWaiters.length,
          ...this.reachedWaiters.filter((w) => w.n > ex.n),
        )
      })
      this.waiting = null
      this.consumed.add(ex.n)
    }
  }

  private answer(res: ServerResponse, ex: Pick<Exchange, 'status' | 'headers' | 'bytes'>): void {
    res.sendDate = false
    res.writeHead(ex.status, ex.headers)
    res.end(ex.bytes)
  }

  /** Whether the client's request is recorded request `ex` (the body too, `client_id` being its own). */
  private matches(ex: Exchange, method: string, p: string, body: unknown): boolean {
    if (ex.method !== method || !samePath(ex.path, p)) return false
    if (ex.body === null || ex.body === undefined) return true
    const want = ex.body as Record<string, unknown>
    const got = (body ?? {}) as Record<string, unknown>
    if ('client_id' in want) {
      const { client_id: _w, ...restWant } = want
      const { client_id: clientId, ...restGot } = got
      return this.connections.includes(String(clientId)) && isDeepStrictEqual(restWant, restGot)
    }
    return isDeepStrictEqual(want, got)
  }

  /** Recorded requests the client may make now: the waiting one and those in the same run of HTTP lines. */
  private window(): Exchange[] {
    if (!this.waiting) return []
    const out: Exchange[] = []
    const others = new Set(this.opts.others ?? [])
    for (let i = this.waiting.ex.reqLine; i < this.lines.length; i++) {
      const line = this.lines[i] as Line
      if (line.dir === 'ws_text' || line.dir === 'ws_binary') break
      if (line.dir !== 'http_req') continue
      const ex = this.exchanges.find((e) => e.reqLine === i) as Exchange
      if (!others.has(ex.n) && !this.consumed.has(ex.n)) out.push(ex)
    }
    return out
  }

  private async onRequest(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const chunks: Buffer[] = []
    for await (const c of req) chunks.push(c as Buffer)
    const text = Buffer.concat(chunks).toString('utf8')
    let body: unknown = null
    try {
      body = text ? JSON.parse(text) : null
    } catch {
      body = text
    }
    const method = req.method ?? 'GET'
    const p = req.url ?? '/'
    const record: RecordedRequest = { method, path: p, headers: req.headers, body, answeredBy: 'fallback' }
    this.requests.push(record)

    const hit = this.window().find((ex) => this.matches(ex, method, p, body))
    if (hit && this.waiting) {
      record.answeredBy = hit.n
      if (hit === this.waiting.ex) {
        // Answered when the timeline reaches the recorded answer (frames recorded before it go first).
        this.heldAnswers.set(hit.n, res)
        this.waiting.resolve(record)
      } else {
        this.consumed.add(hit.n)
        this.answer(res, hit)
      }
      return
    }
    const { pathname } = parseQuery(p)
    const before = (ex: Exchange) => ex.resLine < this.cursor
    if (method === 'GET' && pathname.startsWith('/history/')) {
      // A prompt still queued or running has no history yet: `{}` (recorded for an unknown id in t04).
      const done = this.exchanges.filter((ex) => before(ex) && samePath(ex.path, p)).at(-1)
      const empty = this.findEverywhere(
        (ex) => ex.method === 'GET' && ex.path.startsWith('/history/') && ex.bytes.toString() === '{}',
      )
      const answer = done ?? empty
      if (answer) return this.answer(res, answer)
    }
    if (method === 'GET' && pathname === '/queue') {
      const recorded = this.exchanges.filter((ex) => before(ex) && ex.path === '/queue').at(-1)
      const idle = this.findEverywhere(
        (ex) => ex.path === '/queue' && ex.bytes.toString() === '{"queue_running": [], "queue_pending": []}',
      )
      const answer = this.idle ? idle : recorded
      if (answer) return this.answer(res, answer)
    }
    if (method === 'GET' && pathname === '/view') {
      const file = this.findEverywhere((ex) => ex.method === 'GET' && samePath(ex.path, p))
      if (file) return this.answer(res, file)
    }
    record.answeredBy = 'unexpected'
    // aiohttp's answer for a route it has no handler for.
    this.answer(res, {
      status: 404,
      headers: { 'Content-Type': 'text/plain; charset=utf-8', 'Content-Length': '14' },
      bytes: Buffer.from('404: Not Found'),
    })
  }

  /** A recorded exchange in any transcript (an idle /queue, an empty /history, a /view file). */
  private findEverywhere(pred: (ex: Exchange) => boolean): Exchange | undefined {
    const own = this.exchanges.find(pred)
    if (own) return own
    for (const file of ALL_TRANSCRIPTS) {
      if (file === this.opts.transcript) continue
      const other = loadTranscript(file).exchanges.find(pred)
      if (other) return other
    }
    return undefined
  }

  /** Resolves when the timeline has been played to its end (or the stand-in closed). */
  get finished(): Promise<void> {
    return this.pumpDone ?? Promise.resolve()
  }
}

const ALL_TRANSCRIPTS = [
  't01_image_success_then_cached.jsonl',
  't02_video_webp_apng_webm_mp4.jsonl',
  't03_runtime_error.jsonl',
  't04_validation_errors.jsonl',
  't05_progress_ws_images.jsonl',
  't06_interrupt.jsonl',
  't07_queue_delete_front_interrupt.jsonl',
]

const transcriptCache = new Map<string, { lines: Line[]; exchanges: Exchange[] }>()

/** A transcript's lines and its request/answer pairs (each request with the next answer to the same route). */
function loadTranscript(file: string): { lines: Line[]; exchanges: Exchange[] } {
  const cached = transcriptCache.get(file)
  if (cached) return cached
  const texts = readFileSync(new URL(file, TRANSCRIPTS_DIR), 'utf8')
    .split('\n')
    .filter((l) => l.trim() !== '')
  const lines = texts.map((l) => JSON.parse(l) as Line)
  const exchanges: Exchange[] = []
  const used = new Set<number>()
  for (const [i, line] of lines.entries()) {
    if (line.dir !== 'http_req') continue
    const resLine = lines.findIndex(
      (l, j) =>
        j > i && !used.has(j) && l.dir === 'http_res' && l.method === line.method && l.path === line.path,
    )
    const res = lines[resLine]
    if (res?.dir !== 'http_res') throw new Error(`${file}: no answer to line ${i + 1}`)
    used.add(resLine)
    exchanges.push({
      n: exchanges.length,
      reqLine: i,
      resLine,
      method: line.method,
      path: line.path,
      body: line.body,
      status: res.status,
      headers: res.headers,
      bytes: recordedBody(texts[resLine] as string, res),
    })
  }
  const out = { lines, exchanges }
  transcriptCache.set(file, out)
  return out
}
