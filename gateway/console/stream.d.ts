// Types of stream.js (plain JavaScript served to browsers as is), for the tests that import it.

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

export interface WebSocketLike {
  readyState: number
  send(data: string): void
  close(): void
  onopen: ((e?: unknown) => void) | null
  onmessage: ((e: { data: unknown }) => void) | null
  onclose: ((e?: unknown) => void) | null
  onerror: ((e?: unknown) => void) | null
}

export interface JobStreamOptions {
  url: () => string
  onEvent: (event: ProgressEvent) => void
  onNotice?: (notice: { op: string; jobId?: string; error?: { code: string; message: string } }) => void
  onState?: (state: StreamState, info?: { delayMs?: number; attempt?: number }) => void
  WebSocket?: new (url: string) => WebSocketLike
  backoff?: { min?: number; max?: number; random?: () => number }
  retrySubscribeMs?: number
  settleMs?: number
  answerTimeoutMs?: number
}

export const TERMINAL: Set<string>
export function backoffDelay(n: number, opts?: { min?: number; max?: number; random?: () => number }): number
export function addEvent(history: Map<number, ProgressEvent>, event: ProgressEvent): boolean

export class JobStream {
  constructor(opts: JobStreamOptions)
  state: StreamState
  start(): void
  restart(): void
  close(): void
  has(jobId: string): boolean
  lastSeq(jobId: string): number | undefined
  follow(jobId: string, after?: number): void
  unfollow(jobId: string): void
  sync(wanted: Map<string, number>): void
}
