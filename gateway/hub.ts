import type { Redis } from 'ioredis'
import { isTerminal } from '../schema/common.ts'
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

/**
 * Longest a subscription may take to set up (current state or replay from Redis). Commands wait for a
 * Redis that is down (maxRetriesPerRequest: null), so without it a stalled Redis holds a stream for ever.
 */
export const SUBSCRIBE_TIMEOUT_MS = 5000

export interface Subscription {
  readonly jobId: string
  /** Seq of the last event delivered. */
  readonly lastSeq: number
  /**
   * True once the job's terminal event is at or before `lastSeq`: delivered, or before the `after` the
   * subscriber resumed from. Nothing more will come.
   */
  readonly finished: boolean
  close(): void
}

export interface SubscribeOptions {
  /** Aborts the set-up: `subscribe` rejects with the signal's reason and the subscription is closed. */
  signal?: AbortSignal
  /** Called when the hub closes (gateway shutdown) and this subscription ends with it. */
  onEnd?: () => void
}

interface Sub {
  jobId: string
  lastSeq: number
  /** While replaying from the log, live events wait here. */
  catchingUp: boolean
  buffer: ProgressEvent[]
  closed: boolean
  finished: boolean
  deliver: (event: ProgressEvent) => void
  onEnd?: () => void
}

/**
 * One Redis pattern subscription for every job, fanned out to local subscribers. Each subscriber gets
 * the current state (or a replay of every event after a seq), then live events: an event is delivered
 * once, in seq order; a gap (an event missed by pub/sub) is filled from the job's replay log.
 */
export class EventHub {
  private readonly subs = new Map<string, Set<Sub>>()
  /** Plain channels (`logs:<jobId>`) listened to on the same connection: their listeners and SUBSCRIBE. */
  private readonly channels = new Map<string, { fns: Set<(raw: string) => void>; ready: Promise<unknown> }>()
  private readonly listeners: ((event: ProgressEvent) => void)[] = []
  private started = false
  private closing = false

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
    this.subscriber.on('message', (channel: string, raw: string) => {
      for (const fn of this.channels.get(channel)?.fns ?? []) fn(raw)
    })
    // After a reconnect pub/sub may have missed events: every subscriber catches up from the log.
    this.subscriber.on('ready', () => {
      for (const set of this.subs.values()) for (const sub of set) void this.catchUp(sub)
    })
    await this.subscriber.psubscribe(PROGRESS_PATTERN)
  }

  /** Ends every subscription (each one's `onEnd` is called) and leaves the pattern (waiting 1 s at most). */
  async close(): Promise<void> {
    this.closing = true
    const all = [...this.subs.values()].flatMap((set) => [...set])
    this.subs.clear()
    for (const sub of all) {
      sub.closed = true
      sub.onEnd?.()
    }
    // A stalled Redis never answers: shutting down must not wait for it.
    let timer: NodeJS.Timeout | undefined
    await Promise.race([
      this.subscriber.punsubscribe(PROGRESS_PATTERN).catch(() => {}),
      new Promise<void>((resolve) => {
        timer = setTimeout(resolve, 1000)
      }),
    ])
    clearTimeout(timer)
  }

  /**
   * Follows a job. Without `after`, the current state comes first; with it, every event after that
   * seq. Resolves once the initial state or replay has been delivered; rejects (and follows nothing)
   * when Redis fails, when `signal` aborts, or when the hub is closing.
   */
  async subscribe(
    jobId: string,
    after: number | undefined,
    deliver: (event: ProgressEvent) => void,
    { signal, onEnd }: SubscribeOptions = {},
  ): Promise<Subscription> {
    if (this.closing) throw new Error('the event hub is closed')
    signal?.throwIfAborted()
    const sub: Sub = {
      jobId,
      lastSeq: after ?? 0,
      catchingUp: true,
      buffer: [],
      closed: false,
      finished: false,
      deliver,
      onEnd,
    }
    const set = this.subs.get(jobId) ?? new Set<Sub>()
    this.subs.set(jobId, set)
    set.add(sub)
    const handle: Subscription = {
      jobId,
      get lastSeq() {
        return sub.lastSeq
      },
      get finished() {
        return sub.finished
      },
      close: () => {
        sub.closed = true
        const s = this.subs.get(jobId)
        s?.delete(sub)
        if (s?.size === 0) this.subs.delete(jobId)
      },
    }
    const setUp = async () => {
      if (after === undefined) {
        const current = (await lastEvent(this.redis, jobId)) ?? (await this.snapshot(jobId))
        if (current) this.emit(sub, current)
      }
      await this.catchUp(sub)
      // Nothing was due after `after`: if the job is over, say so (its stored final state if the log that
      // would have replayed it has expired), since no live event will ever come.
      if (!sub.finished && after !== undefined && sub.lastSeq === after) {
        const last = (await lastEvent(this.redis, jobId)) ?? (await this.snapshot(jobId))
        if (last && isTerminal(last.status)) {
          this.emit(sub, last)
          sub.finished = true
        }
      }
    }
    let onAbort: (() => void) | undefined
    try {
      const setUpDone = setUp()
      if (!signal) await setUpDone
      else {
        // Redis may answer later, or never: the set-up goes on unseen (its sub is closed) and fails quietly.
        setUpDone.catch(() => {})
        await Promise.race([
          setUpDone,
          new Promise<never>((_, reject) => {
            onAbort = () => reject(signal.reason)
            signal.addEventListener('abort', onAbort, { once: true })
          }),
        ])
      }
    } catch (err) {
      handle.close()
      throw err
    } finally {
      if (onAbort) signal?.removeEventListener('abort', onAbort)
    }
    return handle
  }

  /**
   * Hears a plain channel's messages (`logs:<jobId>`) on the hub's one subscriber connection, so a
   * follower costs no connection of its own: the channel is subscribed for its first listener and left
   * after its last. Resolves, with the function that stops listening, once Redis has confirmed the
   * subscription; rejects (listening to nothing) when it fails. ioredis subscribes again after a reconnect;
   * what was published meanwhile is the caller's to read from where it is stored.
   */
  async listen(channel: string, fn: (raw: string) => void): Promise<() => void> {
    if (this.closing) throw new Error('the event hub is closed')
    let entry = this.channels.get(channel)
    if (!entry) {
      const ready = this.subscriber.subscribe(channel)
      entry = { fns: new Set(), ready }
      this.channels.set(channel, entry)
    }
    const { fns } = entry
    fns.add(fn)
    const stop = () => {
      fns.delete(fn)
      if (fns.size > 0 || this.channels.get(channel) !== entry) return
      this.channels.delete(channel)
      void this.subscriber.unsubscribe(channel).catch(() => {})
    }
    try {
      await entry.ready
    } catch (err) {
      stop()
      throw err
    }
    return stop
  }

  private emit(sub: Sub, event: ProgressEvent): void {
    if (sub.closed || event.seq <= sub.lastSeq) return
    sub.lastSeq = event.seq
    if (isTerminal(event.status)) sub.finished = true
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
