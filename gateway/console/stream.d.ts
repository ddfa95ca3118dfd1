// Types of stream.js (plain JavaScript served to browsers as is), for the CLI and the tests that import it.

export interface ProgressEvent {
  jobId: string
  status: string
  progress: number
  message: string
  timestamp: string
  seq: number
  type: string
  attempt: number
}

export type StreamState = 'connecting' | 'open' | 'waiting' | 'closed'

/** `cause`: on `waiting`, the error or close event (or the thrown error) that ended the connection. */
export type StateInfo = { delayMs?: number; attempt?: number; cause?: unknown }

export interface BackoffOptions {
  min?: number
  max?: number
  random?: () => number
}

export interface WebSocketLike {
  readyState: number
  send(data: string): void
  close(): void
  onopen: ((e?: unknown) => void) | null
  onmessage: ((e: { data: unknown }) => void) | null
  onclose: ((e?: unknown) => void) | null
  onerror: ((e?: unknown) => void) | null
}

export interface ReconnectingOptions {
  onState?: (state: StreamState, info?: StateInfo) => void
  backoff?: BackoffOptions
}

export interface JobStreamOptions extends ReconnectingOptions {
  url: () => string
  onEvent: (event: ProgressEvent) => void
  onNotice?: (notice: { op: string; jobId?: string; error?: { code: string; message: string } }) => void
  WebSocket?: new (url: string) => WebSocketLike
  retrySubscribeMs?: number
  settleMs?: number
  answerTimeoutMs?: number
}

export const TERMINAL: Set<string>
/** `45%`: rounded down; with a job's status, `100%` only when it completed. */
export function percentText(value: number, status?: string): string
/** A job's attempt: "2 of 3" while another may come, "1 attempt" once completed, "2" when it ended early. */
export function attemptText(job: {
  attempt: number
  maxAttempts: number
  status: string
  attempts?: { outcome: string | null; reason: string | null }[]
}): string
/** A UUID by its first 8 characters, any other id whole. */
export function shortJobId(id: string): string
export function backoffDelay(n: number, opts?: BackoffOptions): number
export function addEvent(history: Map<number, ProgressEvent>, event: ProgressEvent): boolean

export class Reconnecting {
  constructor(opts: ReconnectingOptions)
  state: StreamState
  /** Failed tries since the last connection that opened. */
  protected attempt: number
  protected stopped: boolean
  start(): void
  restart(): void
  close(): void
  protected connected(): boolean
  protected connect(): void
  protected dropConnection(): void
  protected setState(state: StreamState, info?: StateInfo): void
  protected opened(): void
  protected dropped(cause?: unknown): void
  /** Runs `fn` after `ms` unless the connection is dropped first. */
  protected later(fn: () => void, ms: number): void
}

export class ReconnectingFetch extends Reconnecting {
  protected request: AbortController | null
  /** Reads one response to its end, aborted by `request` when closed; resolves with what ended it. */
  protected read(request: AbortController): Promise<unknown>
}

export class JobStream extends Reconnecting {
  constructor(opts: JobStreamOptions)
  has(jobId: string): boolean
  lastSeq(jobId: string): number | undefined
  /** `after`: the last seq already seen (default 0: every event); `null`: from the current state. */
  follow(jobId: string, after?: number | null): void
  unfollow(jobId: string): void
  sync(wanted: Map<string, number>): void
}
