/**
 * The `comfyui` engine of render_video: one prompt on a ComfyUI server over its HTTP + WebSocket API
 * (shared/reference/engines.md section 1, checked against the recorded transcripts). It submits the graph
 * with a `client_id`, follows `/ws?clientId=` for progress, falls back to polling `/history/<id>` when the
 * socket drops, streams every output file from `/view` into the job's artifacts, and on cancel or timeout
 * deletes the prompt from ComfyUI's queue or interrupts it, so ComfyUI is idle when the job ends.
 */
import { randomUUID } from 'node:crypto'
import path from 'node:path'
import { Readable, Transform } from 'node:stream'
import type { ReadableStream as WebReadableStream } from 'node:stream/web'
import WebSocket from 'ws'
import type { ComfyGraph } from '../../schema/params/render-video.ts'
import type { ArtifactRecord, HandlerContext } from '../sdk/context.ts'
import { NonRetryableError, RetryableError } from '../sdk/errors.ts'

/** Bounds of every wait; the defaults suit a real server, tests shorten them. */
export interface ComfyTimings {
  /**
   * One HTTP call, to its response headers. ComfyUI's event loop can stall for seconds while it encodes
   * and streams previews, so this is tens of seconds, not one or two.
   */
  httpTimeoutMs: number
  /** A `/view` download that sends no byte for this long is given up. */
  downloadIdleMs: number
  /** Opening the WebSocket. */
  connectTimeoutMs: number
  /** `/history/<id>` is polled this often while the socket is up (a missed event cannot hang the job)... */
  pollMs: number
  /** ...and this often while it is down. */
  pollWhileDownMs: number
  /** ComfyUI unreachable (socket and HTTP) for this long fails the attempt as retryable. */
  maxDownMs: number
  /**
   * Cancel: how long to wait for an interrupt to land (it lands at the next node boundary). Below the
   * host's KILL_GRACE_SEC (default 10 s), which is all the time a cancelled job process gets.
   */
  cancelWaitMs: number
}

export const DEFAULT_TIMINGS: ComfyTimings = {
  httpTimeoutMs: 30_000,
  downloadIdleMs: 60_000,
  connectTimeoutMs: 30_000,
  pollMs: 5_000,
  pollWhileDownMs: 1_000,
  maxDownMs: 60_000,
  cancelWaitMs: 8_000,
}

/** One file an output node wrote, as `/history` lists it. */
export interface ComfyFile {
  node: string
  filename: string
  subfolder: string
  type: string
}

export interface ComfyRunResult {
  promptId: string
  /** The artifacts stored from ComfyUI's outputs, in output-node order. */
  files: ArtifactRecord[]
  cachedNodes: number
  executedNodes: number
}

/** Where ComfyUI is: the base URL without credentials (safe to print) and the auth header they make. */
export interface ComfyEndpoint {
  base: URL
  /** `COMFYUI_URL` with any user and password removed: the only form that goes into messages. */
  display: string
  headers: Record<string, string>
}

/** Parses COMFYUI_URL; user and password in it become a Basic Authorization header and never reach a message. */
export function comfyEndpoint(url: string): ComfyEndpoint {
  const base = new URL(url)
  const headers: Record<string, string> = {}
  if (base.username || base.password) {
    const creds = `${decodeURIComponent(base.username)}:${decodeURIComponent(base.password)}`
    headers.authorization = `Basic ${Buffer.from(creds).toString('base64')}`
    base.username = ''
    base.password = ''
  }
  base.search = ''
  base.hash = ''
  if (!base.pathname.endsWith('/')) base.pathname += '/'
  return { base, display: base.toString().replace(/\/$/, ''), headers }
}

const ERR_CODE = 'COMFYUI_UNAVAILABLE'

/** ComfyUI did not answer or answered with a server error: worth another attempt. */
const unavailable = (ep: ComfyEndpoint, what: string, cause?: unknown): RetryableError =>
  new RetryableError(`ComfyUI at COMFYUI_URL=${ep.display} ${what}`, { code: ERR_CODE, cause })

const causeText = (err: unknown): string => {
  const e = err as { cause?: { code?: string; message?: string }; code?: string; message?: string }
  return e?.cause?.code ?? e?.code ?? e?.cause?.message ?? e?.message ?? String(err)
}

/**
 * A request to ComfyUI. `timeoutMs` bounds the wait for the response headers, and with `wholeBody` the
 * body too (JSON answers); a download's body is bounded by its own idle watchdog instead, so a large
 * video is not cut off. No Origin header is ever sent (ComfyUI's origin check, engines.md 1.1).
 */
async function comfyFetch(
  ep: ComfyEndpoint,
  method: 'GET' | 'POST',
  route: string,
  opts: { body?: unknown; timeoutMs: number; signal?: AbortSignal; wholeBody?: boolean },
): Promise<{ res: Response; text?: string }> {
  const url = new URL(route.replace(/^\//, ''), ep.base)
  const timeout = new AbortController()
  const timer = setTimeout(() => timeout.abort(new Error('timeout')), opts.timeoutMs)
  const signal = opts.signal ? AbortSignal.any([opts.signal, timeout.signal]) : timeout.signal
  try {
    const res = await fetch(url, {
      method,
      headers: {
        ...ep.headers,
        ...(opts.body === undefined ? {} : { 'content-type': 'application/json' }),
      },
      body: opts.body === undefined ? undefined : JSON.stringify(opts.body),
      signal,
    })
    // A proxy in front of a restarting ComfyUI answers 502/503/504; ComfyUI itself 500 on a crash.
    if (res.status >= 500) {
      await res.body?.cancel().catch(() => {})
      throw unavailable(ep, `answered ${res.status} to ${method} ${routeName(route)} (restarting?)`)
    }
    return { res, text: opts.wholeBody ? await res.text() : undefined }
  } catch (err) {
    if (err instanceof RetryableError) throw err
    if (opts.signal?.aborted) throw err
    if (timeout.signal.aborted)
      throw unavailable(
        ep,
        `did not answer ${method} ${routeName(route)} within ${Math.round(opts.timeoutMs / 1000)} s`,
        err,
      )
    throw unavailable(ep, `is unreachable (${causeText(err)}) on ${method} ${routeName(route)}`, err)
  } finally {
    clearTimeout(timer)
  }
}

/** The route without its query, for messages. */
const routeName = (route: string): string => `/${route.replace(/^\//, '').split('?')[0]}`

async function comfyJson<T>(
  ep: ComfyEndpoint,
  method: 'GET' | 'POST',
  route: string,
  opts: { body?: unknown; timeoutMs: number },
): Promise<{ status: number; json: T }> {
  const { res, text } = await comfyFetch(ep, method, route, { ...opts, wholeBody: true })
  try {
    return { status: res.status, json: JSON.parse(text ?? '') as T }
  } catch (err) {
    throw unavailable(
      ep,
      `sent a body that is not JSON (${res.status}) on ${method} ${routeName(route)}`,
      err,
    )
  }
}

/** A POST whose answer has no body worth reading (/queue, /interrupt answer 200 and nothing). */
async function comfyPost(ep: ComfyEndpoint, route: string, body: unknown, timeoutMs: number): Promise<void> {
  await comfyFetch(ep, 'POST', route, { body, timeoutMs, wholeBody: true })
}

interface NodeError {
  errors?: { type?: string; message?: string; details?: string; extra_info?: Record<string, unknown> }[]
  class_type?: string
}
interface PromptRefusal {
  error?: { type?: string; message?: string; details?: string } | string
  node_errors?: Record<string, NodeError> | unknown[]
}

/**
 * The job's error for a 400 from POST /prompt: every refused node and input as a params path
 * (`params.workflow.<id>.inputs.<name>`), with ComfyUI's message and error type. `details` is left out
 * where it would echo the rejected value.
 */
export function describeRefusal(body: PromptRefusal): string {
  const error = typeof body.error === 'string' ? { message: body.error } : (body.error ?? {})
  const parts: string[] = []
  const nodeErrors = body.node_errors && !Array.isArray(body.node_errors) ? body.node_errors : {}
  for (const [id, node] of Object.entries(nodeErrors)) {
    for (const e of node.errors ?? []) {
      const input = typeof e.extra_info?.input_name === 'string' ? e.extra_info.input_name : undefined
      const where = `params.workflow.${id}${input ? `.inputs.${input}` : ''}`
      const exception =
        typeof e.extra_info?.exception_message === 'string' ? e.extra_info.exception_message : ''
      const detail = exception || (e.type?.startsWith('exception') ? (e.details ?? '') : '')
      parts.push(
        `${where} (${node.class_type ?? 'node'}): ${e.message ?? 'invalid'}${detail ? `: ${detail}` : ''} [${e.type ?? 'error'}]`,
      )
    }
  }
  if (parts.length === 0) {
    // invalid_prompt (an unknown class) names its node only in `details`: "Node ID '#1'".
    const node = /#([^'\s]+)'?/.exec(error.details ?? '')?.[1]
    parts.push(
      `${node ? `params.workflow.${node}: ` : ''}${error.message ?? 'refused'} [${error.type ?? 'error'}]`,
    )
  }
  return `ComfyUI refused the workflow: ${parts.join('; ')}`
}

/** Content types by extension, for a /view answer without a useful one. */
const TYPES: Record<string, string> = {
  '.mp4': 'video/mp4',
  '.webm': 'video/webm',
  '.mov': 'video/quicktime',
  '.mkv': 'video/x-matroska',
  '.avi': 'video/x-msvideo',
  '.gif': 'image/gif',
  '.webp': 'image/webp',
  '.png': 'image/png',
  '.apng': 'image/apng',
  '.jpg': 'image/jpeg',
  '.jpeg': 'image/jpeg',
  '.wav': 'audio/wav',
  '.flac': 'audio/flac',
  '.mp3': 'audio/mpeg',
  '.ogg': 'audio/ogg',
  '.opus': 'audio/opus',
  '.json': 'application/json',
  '.txt': 'text/plain; charset=utf-8',
}

/** The header's type, unless it is missing or generic; then the extension's. */
export function contentTypeOf(filename: string, header: string | null): string {
  const generic = !header || /^(application\/octet-stream|binary\/octet-stream)\b/i.test(header)
  return generic ? (TYPES[path.extname(filename).toLowerCase()] ?? 'application/octet-stream') : header
}

/**
 * Every file of every output node in a `/history` entry's `outputs`: `images` (core SaveVideo and
 * SaveAnimatedWEBP list their files there too, with `animated: [true]`), `gifs` (VideoHelperSuite),
 * `audio`, and any other list of `{filename, subfolder, type}`. Entries without a filename (text) are skipped.
 */
export function outputFiles(outputs: Record<string, unknown>): ComfyFile[] {
  const files: ComfyFile[] = []
  const ids = Object.keys(outputs).sort((a, b) => a.localeCompare(b, 'en', { numeric: true }))
  for (const node of ids) {
    const ui = outputs[node]
    if (typeof ui !== 'object' || ui === null) continue
    for (const list of Object.values(ui)) {
      if (!Array.isArray(list)) continue
      for (const item of list) {
        const f = item as { filename?: unknown; subfolder?: unknown; type?: unknown }
        if (typeof f?.filename !== 'string' || f.filename === '') continue
        files.push({
          node,
          filename: f.filename,
          subfolder: typeof f.subfolder === 'string' ? f.subfolder : '',
          type: typeof f.type === 'string' ? f.type : 'output',
        })
      }
    }
  }
  return files
}

/** Artifact names for the files: the file name, or `<node>_<name>` when two outputs share one. */
export function artifactNames(files: ComfyFile[], reserved: ReadonlySet<string>): string[] {
  const taken = new Set(reserved)
  return files.map((f) => {
    const clean = f.filename.replace(/[\\\0]/g, '_').replace(/^\.+/, '_')
    let name = taken.has(clean) ? `node${f.node}_${clean}` : clean
    for (let i = 2; taken.has(name); i++) name = `node${f.node}_${i}_${clean}`
    taken.add(name)
    return name
  })
}

type Outcome =
  | { kind: 'success' }
  | { kind: 'error'; data: ExecutionError }
  | { kind: 'interrupted'; data: { node_id?: string; node_type?: string } }

interface ExecutionError {
  node_id?: string
  node_type?: string
  exception_type?: string
  exception_message?: string
  traceback?: string[]
}

interface HistoryEntry {
  outputs?: Record<string, unknown>
  status?: { status_str?: string; completed?: boolean; messages?: [string, Record<string, unknown>][] }
}

/** What a `/history` entry says about how the prompt ended. */
function outcomeOfHistory(entry: HistoryEntry): Outcome | null {
  const messages = entry.status?.messages ?? []
  const find = (type: string) => messages.find((m) => Array.isArray(m) && m[0] === type)?.[1]
  const error = find('execution_error')
  if (error) return { kind: 'error', data: error as ExecutionError }
  const interrupted = find('execution_interrupted')
  if (interrupted) return { kind: 'interrupted', data: interrupted as { node_id?: string } }
  if (entry.status?.status_str === 'success' || entry.status?.completed) return { kind: 'success' }
  if (entry.status?.status_str === 'error') return { kind: 'error', data: {} }
  // An old ComfyUI without `status`: history is written when the prompt is done.
  return entry.status ? null : { kind: 'success' }
}

/** The job's error for a failed run: the node, its type and the exception, as ComfyUI sent them. */
function executionFailure(data: ExecutionError, graph: ComfyGraph): Error {
  const node = data.node_id ?? '?'
  const type = data.node_type ?? graph[node]?.class_type ?? 'node'
  const exception = `${data.exception_type ?? 'error'}: ${(data.exception_message ?? 'no message').trim()}`
  const message = `ComfyUI failed in node ${node} (${type}): ${exception}`
  // Out of memory can pass on another attempt (another GPU, less load); anything else would fail the same.
  if (/out ?of ?memory|OutOfMemory/i.test(exception))
    return new RetryableError(message, { code: 'COMFYUI_EXECUTION_ERROR' })
  return new NonRetryableError(message, { reason: 'non_retryable', code: 'COMFYUI_EXECUTION_ERROR' })
}

const abortError = (signal: AbortSignal): Error =>
  signal.reason instanceof Error ? signal.reason : new Error(String(signal.reason ?? 'aborted'))

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms))

/** Nodes that lead to an output node: the ones ComfyUI will run (or serve from its cache). */
function nodesToRun(graph: ComfyGraph, outputNodes: readonly string[]): Set<string> {
  const seen = new Set<string>()
  const stack = [...outputNodes]
  while (stack.length > 0) {
    const id = stack.pop() as string
    if (seen.has(id) || !Object.hasOwn(graph, id)) continue
    seen.add(id)
    for (const value of Object.values(graph[id]?.inputs ?? {}))
      if (Array.isArray(value) && value.length === 2 && typeof value[0] === 'string') stack.push(value[0])
  }
  return seen.size > 0 ? seen : new Set(Object.keys(graph))
}

/** Progress percent bands: queued, running the graph, downloading the outputs. */
const RUN_FROM = 2
const RUN_TO = 90
const DOWNLOAD_TO = 99

/**
 * Progress of one prompt from ComfyUI's events: nodes done (cached ones count as done) out of the nodes to
 * run, plus `value/max` inside the running node. Messages name the node by class_type and id.
 */
class PromptProgress {
  readonly done = new Set<string>()
  current: string | null = null
  value = 0
  max = 0
  cached = 0
  private lastPercent = 0
  private lastMessage = ''

  constructor(
    private readonly ctx: HandlerContext,
    private readonly graph: ComfyGraph,
    readonly toRun: Set<string>,
  ) {}

  private label(id: string): string {
    const type = this.graph[id]?.class_type
    return type ? `${type} #${id}` : `node #${id}`
  }

  cachedNodes(ids: string[]): void {
    for (const id of ids) {
      this.toRun.add(id)
      this.done.add(id)
    }
    this.cached = ids.length
    if (ids.length > 0) this.report(`ComfyUI: ${ids.length} of ${this.toRun.size} nodes cached`)
  }

  executing(id: string): void {
    if (this.current !== null && this.current !== id) this.done.add(this.current)
    if (this.current !== id) {
      this.value = 0
      this.max = 0
    }
    this.current = id
    this.toRun.add(id)
    this.report()
  }

  finished(id: string): void {
    this.toRun.add(id)
    this.done.add(id)
    if (this.current === id) {
      this.value = 0
      this.max = 0
    }
  }

  step(id: string, value: number, max: number): void {
    if (this.current !== id) this.executing(id)
    this.value = value
    this.max = max
    this.report()
  }

  percentNow(): number {
    const frac =
      this.current !== null && !this.done.has(this.current) && this.max > 0 ? this.value / this.max : 0
    const share = Math.min(
      1,
      (this.done.size + Math.min(1, Math.max(0, frac))) / Math.max(1, this.toRun.size),
    )
    return RUN_FROM + (RUN_TO - RUN_FROM) * share
  }

  report(message?: string): void {
    let text = message
    if (text === undefined) {
      // Between nodes (the last one finished, the next not started) the next node's start reports.
      if (this.current === null || this.done.has(this.current)) return
      const ordinal = Math.min(this.toRun.size, this.done.size + 1)
      text = `node ${ordinal}/${this.toRun.size}: ${this.label(this.current)}`
      if (this.max > 1 || (this.max > 0 && this.value > 0)) text += ` ${this.value}/${this.max}`
    }
    this.emit(this.percentNow(), text)
  }

  emit(percent: number, message: string): void {
    const p = Math.round(Math.max(this.lastPercent, Math.min(100, percent)) * 10) / 10
    if (p === this.lastPercent && message === this.lastMessage) return
    this.lastPercent = p
    this.lastMessage = message
    this.ctx.progress(p, message)
  }
}

interface ComfyEvent {
  type?: string
  data?: Record<string, unknown>
}

/**
 * The WebSocket of one client id, reconnecting with the same id when it drops (ComfyUI routes a prompt's
 * events to the socket of its client id, and re-sends the running node on reconnect). Binary frames
 * (previews) are dropped unread.
 */
class ComfySocket {
  private ws: WebSocket | null = null
  private closed = false
  private downSince: number | null = null
  private retry: NodeJS.Timeout | undefined
  private attempts = 0

  constructor(
    private readonly ep: ComfyEndpoint,
    private readonly clientId: string,
    private readonly timings: ComfyTimings,
    private readonly onEvent: (event: ComfyEvent) => void,
    private readonly onFatal: (err: Error) => void,
    private readonly log: HandlerContext['log'],
    private readonly onReconnect: () => void,
  ) {}

  get up(): boolean {
    return this.ws?.readyState === WebSocket.OPEN
  }

  /** How long the socket has been down (0 while up). */
  downForMs(): number {
    return this.downSince === null ? 0 : Date.now() - this.downSince
  }

  /** The first connection: failing it fails the attempt (ComfyUI unreachable). */
  open(): Promise<void> {
    return new Promise((resolve, reject) => {
      const ws = this.dial()
      const fail = (err: Error) => {
        ws.removeAllListeners('open')
        ws.terminate()
        reject(unavailable(this.ep, `refused the WebSocket /ws (${causeText(err)})`, err))
      }
      ws.once('error', fail)
      ws.once('open', () => {
        ws.off('error', fail)
        this.attach(ws)
        resolve()
      })
    })
  }

  private dial(): WebSocket {
    const url = new URL('ws', this.ep.base)
    url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:'
    url.searchParams.set('clientId', this.clientId)
    // No `origin` option: ws then sends no Origin header, which ComfyUI's origin check lets through.
    return new WebSocket(url, {
      headers: this.ep.headers,
      handshakeTimeout: this.timings.connectTimeoutMs,
      perMessageDeflate: false,
    })
  }

  private attach(ws: WebSocket): void {
    this.ws = ws
    this.downSince = null
    this.attempts = 0
    ws.on('message', (data, isBinary) => {
      if (isBinary) return
      let event: ComfyEvent
      try {
        event = JSON.parse(String(data)) as ComfyEvent
      } catch {
        return
      }
      if (event && typeof event === 'object') this.onEvent(event)
    })
    ws.on('error', (err) => this.log.debug(`ComfyUI WebSocket error: ${causeText(err)}`))
    ws.on('close', () => {
      if (this.ws === ws) this.ws = null
      if (this.closed) return
      this.downSince ??= Date.now()
      this.log.warn('ComfyUI WebSocket closed; reconnecting with the same client id and polling /history')
      this.scheduleReconnect()
    })
  }

  private scheduleReconnect(): void {
    if (this.closed) return
    if (this.downForMs() > this.timings.maxDownMs) {
      this.onFatal(
        unavailable(this.ep, `lost its WebSocket for over ${Math.round(this.timings.maxDownMs / 1000)} s`),
      )
      return
    }
    const delay = Math.min(5_000, 250 * 2 ** Math.min(this.attempts++, 5))
    this.retry = setTimeout(() => {
      const ws = this.dial()
      ws.once('error', () => {
        ws.terminate()
        this.scheduleReconnect()
      })
      ws.once('open', () => {
        ws.removeAllListeners('error')
        this.log.info('ComfyUI WebSocket reconnected')
        this.attach(ws)
        this.onReconnect()
      })
    }, delay)
  }

  close(): void {
    this.closed = true
    clearTimeout(this.retry)
    this.ws?.terminate()
    this.ws = null
  }
}

interface QueueState {
  running: boolean
  pending: boolean
}

async function queueState(ep: ComfyEndpoint, promptId: string, timings: ComfyTimings): Promise<QueueState> {
  const { json } = await comfyJson<{ queue_running?: unknown[][]; queue_pending?: unknown[][] }>(
    ep,
    'GET',
    'queue',
    { timeoutMs: timings.httpTimeoutMs },
  )
  const has = (items: unknown[][] | undefined) => (items ?? []).some((item) => item?.[1] === promptId)
  return { running: has(json.queue_running), pending: has(json.queue_pending) }
}

async function historyOf(
  ep: ComfyEndpoint,
  promptId: string,
  timings: ComfyTimings,
): Promise<HistoryEntry | null> {
  const { json } = await comfyJson<Record<string, HistoryEntry>>(
    ep,
    'GET',
    `history/${encodeURIComponent(promptId)}`,
    { timeoutMs: timings.httpTimeoutMs },
  )
  return json[promptId] ?? null
}

/**
 * Runs `graph` on ComfyUI and stores every output file as an artifact. Rejects with the signal's reason
 * after cleaning up in ComfyUI when the job is cancelled or times out; with a RetryableError naming
 * ComfyUI and COMFYUI_URL when it cannot be reached; with a NonRetryableError when it refuses the graph.
 *
 * @example const run = await runComfyPrompt(ctx, workflow.graph, workflow.outputNodes, { reserved: new Set(['workflow.json']) })
 */
export async function runComfyPrompt(
  ctx: HandlerContext,
  graph: ComfyGraph,
  outputNodes: readonly string[],
  opts: { timings?: Partial<ComfyTimings>; reserved?: ReadonlySet<string>; clientId?: string } = {},
): Promise<ComfyRunResult> {
  const url = ctx.engines.comfyuiUrl
  if (!url) throw new Error('runComfyPrompt needs ctx.engines.comfyuiUrl')
  const ep = comfyEndpoint(url)
  const timings = { ...DEFAULT_TIMINGS, ...opts.timings }
  const clientId = opts.clientId ?? `gpu-jobs-${randomUUID()}`
  const progress = new PromptProgress(ctx, graph, nodesToRun(graph, outputNodes))
  const { signal } = ctx

  let promptId: string | null = null
  let settle: ((outcome: Outcome) => void) | null = null
  let fail: ((err: Error) => void) | null = null
  const finished = new Promise<Outcome>((resolve, reject) => {
    settle = resolve
    fail = reject
  })
  // A fatal error can come before anything awaits `finished` (the socket lost during POST /prompt).
  finished.catch(() => {})
  let outcome: Outcome | null = null
  let interruptedSeen = false
  let started = false
  const early: ComfyEvent[] = []
  const end = (o: Outcome) => {
    if (o.kind === 'interrupted') interruptedSeen = true
    if (outcome) return
    outcome = o
    settle?.(o)
  }

  const onEvent = (event: ComfyEvent): void => {
    const data = event.data ?? {}
    // Events of other prompts (other clients' broadcasts) are not ours; `status` has no prompt id.
    if (typeof data.prompt_id === 'string' && promptId !== null && data.prompt_id !== promptId) return
    if (promptId === null && typeof data.prompt_id === 'string') {
      // Our POST /prompt has not answered yet; keep the event until we know our id.
      early.push(event)
      return
    }
    switch (event.type) {
      case 'status': {
        const remaining = (data.status as { exec_info?: { queue_remaining?: number } })?.exec_info
          ?.queue_remaining
        if (!started && promptId !== null && typeof remaining === 'number' && remaining > 1)
          progress.emit(1, `waiting in ComfyUI's queue (${remaining} prompts queued or running)`)
        return
      }
      case 'execution_start':
        started = true
        progress.emit(RUN_FROM, 'ComfyUI started the prompt')
        return
      case 'execution_cached':
        started = true
        progress.cachedNodes(Array.isArray(data.nodes) ? data.nodes.map(String) : [])
        return
      case 'executing': {
        const node = data.node
        if (node === null) {
          // The classic "done" (main.py): after execution_success, or after an error or interrupt. If
          // neither came (an old ComfyUI, or a frame lost while the socket was down), ask /history.
          if (data.prompt_id === promptId && !outcome) void checkHistory()
          return
        }
        if (typeof node === 'string') {
          started = true
          progress.executing(node)
        }
        return
      }
      case 'progress':
        if (typeof data.node === 'string' && typeof data.value === 'number' && typeof data.max === 'number')
          progress.step(data.node, data.value, data.max)
        return
      case 'progress_state': {
        const nodes = (data.nodes ?? {}) as Record<string, { value?: number; max?: number; state?: string }>
        let running: string | null = null
        for (const [id, n] of Object.entries(nodes)) {
          if (n?.state === 'finished') progress.finished(id)
          else if (n?.state === 'running') running = id
        }
        const n = running === null ? undefined : nodes[running]
        if (running !== null && n && typeof n.value === 'number' && typeof n.max === 'number')
          progress.step(running, n.value, n.max)
        else progress.report()
        return
      }
      case 'execution_success':
        end({ kind: 'success' })
        return
      case 'execution_error':
        end({ kind: 'error', data: data as ExecutionError })
        return
      case 'execution_interrupted':
        end({ kind: 'interrupted', data: data as { node_id?: string } })
        return
    }
  }

  let fatal: Error | null = null
  const onFatal = (err: Error) => {
    fatal ??= err
    fail?.(err)
  }

  let polling = false
  let lastReached = Date.now()
  /** Reads /history once; a finished prompt settles the run; a prompt ComfyUI no longer knows fails it. */
  const checkHistory = async (queueToo = false): Promise<void> => {
    if (polling || promptId === null || outcome) return
    polling = true
    try {
      const entry = await historyOf(ep, promptId, timings)
      lastReached = Date.now()
      if (entry) {
        const o = outcomeOfHistory(entry)
        if (o) end(o)
        return
      }
      if (!queueToo) return
      const q = await queueState(ep, promptId, timings)
      if (q.running || q.pending) return
      // Not queued and no history: finished between the two reads, or ComfyUI restarted and lost it.
      const again = await historyOf(ep, promptId, timings)
      if (again) {
        const o = outcomeOfHistory(again)
        if (o) end(o)
      } else
        onFatal(unavailable(ep, `no longer knows prompt ${promptId} (not queued, no history: restarted?)`))
    } catch (err) {
      // Unreachable: the socket's reconnect loop and lastReached bound how long this may go on.
      if (Date.now() - lastReached > timings.maxDownMs)
        onFatal(err instanceof Error ? err : new Error(String(err)))
    } finally {
      polling = false
    }
  }

  // Events sent while the socket was down are lost: the end may have passed meanwhile, so read /history
  // (and /queue) as soon as it is back rather than at the next poll.
  const socket = new ComfySocket(ep, clientId, timings, onEvent, onFatal, ctx.log, () => {
    void checkHistory(true)
  })
  let poller: NodeJS.Timeout | undefined
  let pollCount = 0
  let onAbort: (() => void) | undefined
  try {
    await socket.open()
    if (signal.aborted) throw abortError(signal)
    // Not tied to ctx.signal: an aborted POST could still queue the prompt without our knowing its id.
    // A cancel that comes meanwhile is handled as soon as the id is known.
    const { status, json } = await comfyJson<PromptRefusal & { prompt_id?: string; node_errors?: unknown }>(
      ep,
      'POST',
      'prompt',
      { body: { prompt: graph, client_id: clientId }, timeoutMs: timings.httpTimeoutMs },
    )
    if (status === 400)
      throw new NonRetryableError(describeRefusal(json), {
        reason: 'invalid_params',
        code: 'COMFYUI_INVALID_PROMPT',
      })
    if (status !== 200 || typeof json.prompt_id !== 'string')
      throw unavailable(ep, `answered ${status} to POST /prompt without a prompt id`)
    promptId = json.prompt_id
    const partial =
      json.node_errors && typeof json.node_errors === 'object' ? Object.keys(json.node_errors) : []
    if (partial.length > 0)
      ctx.log.warn(
        `ComfyUI queued the prompt but refused output nodes ${partial.join(', ')}: ${describeRefusal(json)}`,
      )
    ctx.log.info(`ComfyUI prompt ${promptId} queued (client ${clientId})`)
    progress.emit(1, `queued in ComfyUI as prompt ${promptId} (${progress.toRun.size} nodes)`)
    for (const event of early.splice(0)) onEvent(event)

    const cancelled = new Promise<never>((_, reject) => {
      onAbort = () => {
        void cancelPrompt(ep, promptId as string, timings, ctx, () => interruptedSeen || outcome !== null)
          .catch((err) => ctx.log.warn(`ComfyUI cleanup after cancel failed: ${causeText(err)}`))
          .finally(() => reject(abortError(signal)))
      }
      if (signal.aborted) onAbort()
      else signal.addEventListener('abort', onAbort, { once: true })
    })
    const tick = () => {
      pollCount++
      const interval = socket.up ? timings.pollMs : timings.pollWhileDownMs
      // Every poll reads /history; every third also /queue, to notice a prompt ComfyUI dropped.
      void checkHistory(pollCount % 3 === 0 || !socket.up).finally(() => {
        if (!outcome && !fatal && !signal.aborted) poller = setTimeout(tick, interval)
      })
    }
    poller = setTimeout(tick, timings.pollMs)

    const result = await Promise.race([finished, cancelled])
    if (signal.aborted) await cancelled
    clearTimeout(poller)
    if (result.kind === 'error') throw executionFailure(result.data, graph)
    if (result.kind === 'interrupted')
      throw new RetryableError(
        `ComfyUI interrupted prompt ${promptId} in node ${result.data.node_id ?? '?'} (${result.data.node_type ?? 'node'}), not at this job's request (someone interrupted ComfyUI)`,
        { code: 'COMFYUI_INTERRUPTED' },
      )
    socket.close()

    // Success: the files from /history, streamed one by one from /view.
    // ComfyUI sends execution_success before it writes the history (main.py: execute, then task_done,
    // then `executing` null): a read right away can still be `{}`. Wait for the entry, within a bound.
    let entry = await historyOf(ep, promptId, timings)
    const historyDeadline = Date.now() + timings.httpTimeoutMs
    while (!entry && Date.now() < historyDeadline) {
      if (signal.aborted) throw abortError(signal)
      await sleep(100)
      entry = await historyOf(ep, promptId, timings)
    }
    if (!entry) throw unavailable(ep, `has no /history entry for finished prompt ${promptId}`)
    const files = outputFiles(entry.outputs ?? {})
    if (files.length === 0) ctx.log.warn(`ComfyUI prompt ${promptId} finished with no output files`)
    progress.emit(
      RUN_TO,
      `ComfyUI finished; fetching ${files.length} output file${files.length === 1 ? '' : 's'}`,
    )
    const names = artifactNames(files, opts.reserved ?? new Set())
    const records: ArtifactRecord[] = []
    for (const [i, file] of files.entries()) {
      if (signal.aborted) throw abortError(signal)
      const record = await download(ep, file, names[i] as string, ctx, timings)
      records.push(record)
      progress.emit(
        RUN_TO + ((DOWNLOAD_TO - RUN_TO) * (i + 1)) / files.length,
        `saved ${record.path} (${record.contentType}, ${record.size} bytes) from node ${file.node}`,
      )
    }
    return {
      promptId,
      files: records,
      cachedNodes: progress.cached,
      executedNodes: progress.done.size - progress.cached,
    }
  } finally {
    clearTimeout(poller)
    if (onAbort) signal.removeEventListener('abort', onAbort)
    socket.close()
  }
}

/** Streams one output from /view into the artifacts, never holding the whole file in memory. */
async function download(
  ep: ComfyEndpoint,
  file: ComfyFile,
  name: string,
  ctx: HandlerContext,
  timings: ComfyTimings,
): Promise<ArtifactRecord> {
  const query = new URLSearchParams({ filename: file.filename, subfolder: file.subfolder, type: file.type })
  const idle = new AbortController()
  const { res } = await comfyFetch(ep, 'GET', `view?${query}`, {
    timeoutMs: timings.httpTimeoutMs,
    signal: AbortSignal.any([ctx.signal, idle.signal]),
  })
  if (res.status !== 200 || !res.body) {
    await res.body?.cancel().catch(() => {})
    // A 404 for a file /history just listed: ComfyUI's output folder was cleaned or is not shared.
    throw new RetryableError(
      `ComfyUI at COMFYUI_URL=${ep.display} answered ${res.status} to /view for ${file.subfolder ? `${file.subfolder}/` : ''}${file.filename} (node ${file.node})`,
      { code: ERR_CODE },
    )
  }
  const contentType = contentTypeOf(file.filename, res.headers.get('content-type'))
  let timer = setTimeout(() => idle.abort(new Error('idle')), timings.downloadIdleMs)
  const watchdog = new Transform({
    transform(chunk, _enc, cb) {
      clearTimeout(timer)
      timer = setTimeout(() => idle.abort(new Error('idle')), timings.downloadIdleMs)
      cb(null, chunk)
    },
    flush(cb) {
      clearTimeout(timer)
      cb()
    },
  })
  const body = Readable.fromWeb(res.body as unknown as WebReadableStream<Uint8Array>)
  body.on('error', (err) => watchdog.destroy(err))
  try {
    return await ctx.artifacts.put(name, body.pipe(watchdog), { contentType })
  } catch (err) {
    if (ctx.signal.aborted) throw abortError(ctx.signal)
    if (idle.signal.aborted)
      throw unavailable(
        ep,
        `stalled for ${Math.round(timings.downloadIdleMs / 1000)} s sending ${file.filename}`,
        err,
      )
    throw err
  } finally {
    clearTimeout(timer)
  }
}

/**
 * Takes the job's prompt out of ComfyUI: deleted from the queue when pending, interrupted when running
 * (the interrupt lands at the next node boundary), then waits, within `cancelWaitMs`, for
 * `execution_interrupted` or the prompt leaving /queue, so ComfyUI is idle when the job says cancelled.
 */
async function cancelPrompt(
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
