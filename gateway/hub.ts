import type { Redis } from 'ioredis'
import type { ProgressEvent } from '../schema/events.ts'
import { PROGRESS_PATTERN } from '../schema/keys.ts'
import { lastEvent, readEvents } from '../schema/progress-log.ts'

/** The JSON text of each event as published: sent to clients as is, never serialised again per client. */
const wire = new WeakMap<ProgressEvent, string>()
export const wireJson = (event: ProgressEvent): string => {
  let json = wire.get(event)
  if (json === undefined) {
    json = JSON.stringify(event)
    wire.set(event, json)
  }
  return json
}

export interface Subscription {
  readonly jobId: string
  /** Seq of the last event delivered. */
  readonly lastSeq: number
  close(): void
}

interface Sub {
  jobId: string
  lastSeq: number
  /** While replaying from the log, live events wait here. */
  catchingUp: boolean
  buffer: ProgressEvent[]
  closed: boolean
  deliver: (event: ProgressEvent) => void
}

/**
 * One Redis pattern subscription for every job, fanned out to local subscribers. Each subscriber gets
 * the current state (or a replay of every event after a seq), then live events: an event is delivered
 * once, in seq order; a gap (an event missed by pub/sub) is filled from the job's replay log.
 */
export class EventHub {
  private readonly subs = new Map<string, Set<Sub>>()
  private readonly listeners: ((event: ProgressEvent) => void)[] = []
  private started = false

  /** Calls `fn` with every event this gateway receives, subscribed or not (cache invalidation). */
  onEvent(fn: (event: ProgressEvent) => void): void {
    this.listeners.push(fn)
  }

  constructor(
    private readonly subscriber: Redis,
    private readonly redis: Redis,
    /** The current state of a job whose replay log is empty or expired (from Postgres). */
    private readonly snapshot: (jobId: string) => Promise<ProgressEvent | null>,
    private readonly onError: (err: unknown) => void = () => {},
  ) {}

  get subscriptionCount(): number {
    let n = 0
    for (const set of this.subs.values()) n += set.size
    return n
  }

  async start(): Promise<void> {
    if (this.started) return
    this.started = true
    this.subscriber.on('pmessage', (_pattern: string, _channel: string, raw: string) => {
      let event: ProgressEvent
      try {
        event = JSON.parse(raw) as ProgressEvent
      } catch {
        return
      }
      wire.set(event, raw)
      for (const fn of this.listeners) fn(event)
      const set = this.subs.get(event.jobId)
      if (set) for (const sub of set) this.offer(sub, event)
    })
    // After a reconnect pub/sub may have missed events: every subscriber catches up from the log.
    this.subscriber.on('ready', () => {
      for (const set of this.subs.values()) for (const sub of set) void this.catchUp(sub)
    })
    await this.subscriber.psubscribe(PROGRESS_PATTERN)
  }

  async close(): Promise<void> {
    this.subs.clear()
    await this.subscriber.punsubscribe(PROGRESS_PATTERN).catch(() => {})
  }

  /**
   * Follows a job. Without `after`, the current state comes first; with it, every event after that
   * seq. Resolves once the initial state or replay has been delivered.
   */
  async subscribe(
    jobId: string,
    after: number | undefined,
    deliver: (event: ProgressEvent) => void,
  ): Promise<Subscription> {
    const sub: Sub = { jobId, lastSeq: after ?? 0, catchingUp: true, buffer: [], closed: false, deliver }
    const set = this.subs.get(jobId) ?? new Set<Sub>()
    this.subs.set(jobId, set)
    set.add(sub)
    const handle: Subscription = {
      jobId,
      get lastSeq() {
        return sub.lastSeq
      },
      close: () => {
        sub.closed = true
        const s = this.subs.get(jobId)
        s?.delete(sub)
        if (s?.size === 0) this.subs.delete(jobId)
      },
    }
    try {
      if (after === undefined) {
        const current = (await lastEvent(this.redis, jobId)) ?? (await this.snapshot(jobId))
        if (current) this.emit(sub, current)
      }
      await this.catchUp(sub)
    } catch (err) {
      handle.close()
      throw err
    }
    return handle
  }

  private emit(sub: Sub, event: ProgressEvent): void {
    if (sub.closed || event.seq <= sub.lastSeq) return
    sub.lastSeq = event.seq
    sub.deliver(event)
  }

  private offer(sub: Sub, event: ProgressEvent): void {
    if (sub.closed || event.seq <= sub.lastSeq) return
    if (sub.catchingUp) sub.buffer.push(event)
    else if (event.seq === sub.lastSeq + 1) this.emit(sub, event)
    else {
      sub.buffer.push(event)
      void this.catchUp(sub)
    }
  }

  /** Delivers every logged event after `lastSeq`, then whatever arrived live meanwhile. */
  private async catchUp(sub: Sub): Promise<void> {
    sub.catchingUp = true
    try {
      for (;;) {
        const page = await readEvents(this.redis, sub.jobId, sub.lastSeq, 500)
        for (const event of page) this.emit(sub, event)
        if (page.length < 500) break
      }
      // Live events that the log did not have yet (published after the read): in order, no duplicates.
      sub.buffer.sort((a, b) => a.seq - b.seq)
      for (const event of sub.buffer) this.emit(sub, event)
      sub.buffer = []
      // A job whose log has expired: fall back to the stored state if it is newer.
      if (sub.lastSeq === 0) {
        const snap = await this.snapshot(sub.jobId)
        if (snap) this.emit(sub, snap)
      }
    } catch (err) {
      this.onError(err)
    } finally {
      sub.catchingUp = false
    }
  }
}
