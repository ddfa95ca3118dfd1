/**
 * One attempt's log: the job process's stdout and stderr lines and its `ctx.log` lines, numbered, bounded
 * (LOG_LIMITS: the lines past the cap are counted, not kept), stored in batches (at most every 250 ms, and
 * what is left at `close()`), and published on `logs:<jobId>` once stored, so a follower that reads the
 * stored lines after subscribing misses none.
 */
import type { Redis } from 'ioredis'
import {
  type JobLogLine,
  LOG_LIMITS,
  type LogBatchMessage,
  type LogCounts,
  type LogLevel,
  type LogLimits,
  type LogStream,
} from '../schema/db/logs.ts'
import { logsChannel } from '../schema/keys.ts'

/** How often a running attempt's new lines are stored and published. */
const WRITE_INTERVAL_MS = 250

/** Where an attempt's lines are kept (the host's retrying writer, gpu-host/state.ts). */
export interface LogStore {
  recordLogs(jobId: string, attempt: number, lines: JobLogLine[], counts: LogCounts): Promise<void>
}

export class AttemptLog {
  private seq = 0
  private bytes = 0
  private dropped = 0
  private pending: JobLogLine[] = []
  private chain: Promise<void> = Promise.resolve()
  private timer: NodeJS.Timeout | undefined
  private closed = false

  constructor(
    private readonly redis: Pick<Redis, 'publish'>,
    private readonly store: LogStore,
    private readonly info: { jobId: string; attempt: number },
    private readonly warn: (msg: string, err?: unknown) => void,
    private readonly limits: LogLimits = LOG_LIMITS,
  ) {}

  /** Lines dropped so far past the cap. */
  get droppedLines(): number {
    return this.dropped
  }

  /** One line of the job process (after `close()`, nothing is taken). */
  add(stream: LogStream, text: string, level?: LogLevel, fields?: Record<string, unknown>): void {
    if (this.closed) return
    const { maxLines, maxBytes, maxLineChars } = this.limits
    const extra = fields && Object.keys(fields).length > 0 ? ` ${safeJson(fields)}` : ''
    const full = text + extra
    const cut = full.length > maxLineChars ? `${full.slice(0, maxLineChars)}…` : full
    const size = Buffer.byteLength(cut)
    // Once one line is over the cap, so is every later one: the kept lines are the first ones, unbroken.
    if (this.dropped > 0 || this.seq >= maxLines || this.bytes + size > maxBytes) this.dropped += 1
    else {
      this.seq += 1
      this.bytes += size
      this.pending.push({
        seq: this.seq,
        at: new Date().toISOString(),
        stream,
        ...(level ? { level } : {}),
        text: cut,
      })
    }
    this.timer ??= setTimeout(() => void this.write(), WRITE_INTERVAL_MS)
  }

  /** Stores the pending lines with the counts, then publishes them; in order, one batch at a time. */
  private write(): Promise<void> {
    clearTimeout(this.timer)
    this.timer = undefined
    const lines = this.pending
    this.pending = []
    const counts: LogCounts = { lines: this.seq, bytes: this.bytes, dropped: this.dropped }
    const { jobId, attempt } = this.info
    const next = this.chain.then(async () => {
      try {
        await this.store.recordLogs(jobId, attempt, lines, counts)
      } catch (err) {
        this.warn('could not store job log lines', err)
      }
      if (lines.length === 0) return
      const message: LogBatchMessage = { attempt, lines }
      await this.redis
        .publish(logsChannel(jobId), JSON.stringify(message))
        .catch((err: unknown) => this.warn('could not publish job log lines', err))
    })
    this.chain = next
    return next
  }

  /** Stores what is left and takes no more lines: called before the attempt's final event. */
  close(): Promise<void> {
    this.closed = true
    return this.write()
  }
}

const safeJson = (x: unknown): string => {
  try {
    return JSON.stringify(x)
  } catch {
    return '[unserialisable fields]'
  }
}
