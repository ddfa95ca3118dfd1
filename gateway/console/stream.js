// One WebSocket for every job the console follows: subscribe/unsubscribe messages, reconnect with
// backoff, and on each reconnect a resubscription of every followed job from the last seq it delivered,
// so no event is lost. Events may still arrive twice (a replay after a resubscription): callers dedupe by
// seq (see `addEvent`). No DOM here, so it runs (and is tested) under Node too.

export const TERMINAL = new Set(['completed', 'failed', 'cancelled'])

/** Backoff before reconnect attempt `n` (0-based): doubling from `min` up to `max`, with jitter. */
export function backoffDelay(n, { min = 250, max = 10_000, random = Math.random } = {}) {
  const base = Math.min(max, min * 2 ** Math.min(n, 20))
  return Math.round(base / 2 + (random() * base) / 2)
}

/**
 * Adds an event to a job's history (a Map seq -> event) unless that seq is already there.
 * Returns whether it was new.
 */
export function addEvent(history, event) {
  if (history.has(event.seq)) return false
  history.set(event.seq, event)
  return true
}

/**
 * @typedef {{ after: number, from: number, fresh: boolean, deferred: boolean }} Sub
 * `from`: the seq the subscription replays from; `after`: the last seq delivered on it, the resume point
 * (it moves only one seq at a time, or on the first event after the answer, which may skip over events
 * the gateway no longer keeps: a stray event can only make a resumption replay more, never less);
 * `deferred`: a resubscription waiting until an earlier subscribe of the same job has settled.
 */
export class JobStream {
  /**
   * @param {{
   *   url: () => string,
   *   onEvent: (event: any) => void,
   *   onNotice?: (notice: any) => void,
   *   onState?: (state: 'connecting' | 'open' | 'waiting' | 'closed', info?: { delayMs?: number, attempt?: number }) => void,
   *   WebSocket?: any,
   *   backoff?: { min?: number, max?: number, random?: () => number },
   *   retrySubscribeMs?: number,
   *   settleMs?: number,
   *   answerTimeoutMs?: number,
   * }} opts
   */
  constructor(opts) {
    this.opts = opts
    this.WebSocket = opts.WebSocket ?? globalThis.WebSocket
    /** @type {Map<string, Sub>} */
    this.subs = new Map()
    /**
     * Subscribe messages sent on this socket and not answered yet, by job. Until the answer, events of
     * the job may come from the subscription being replaced, so they do not move its `after`.
     * @type {Map<string, number>}
     */
    this.inflight = new Map()
    /** When the last subscribe of each job was answered on this socket (ms since epoch). */
    this.answeredAt = new Map()
    this.socket = null
    this.attempt = 0
    this.timer = null
    this.stopped = true
    this.state = 'closed'
  }

  /** Opens the socket (and keeps it open until `close`). */
  start() {
    this.stopped = false
    if (!this.socket && !this.timer) this.connect()
  }

  /** Drops the socket and opens a new one at once (e.g. the token changed). */
  restart() {
    this.attempt = 0
    this.dropSocket()
    this.stopped = false
    this.connect()
  }

  close() {
    this.stopped = true
    this.dropSocket()
    this.setState('closed')
  }

  /** Whether `jobId` is followed. */
  has(jobId) {
    return this.subs.has(jobId)
  }

  /** The resume point of a followed job, or undefined. */
  lastSeq(jobId) {
    return this.subs.get(jobId)?.after
  }

  /**
   * Follows a job from `after` (every event with a greater seq). Following it already from that seq or
   * earlier does nothing; asking for an earlier seq resubscribes from there (a replay).
   */
  follow(jobId, after = 0) {
    const sub = this.subs.get(jobId)
    if (sub && sub.from <= after) return
    const next = { after, from: after, fresh: false, deferred: false }
    this.subs.set(jobId, next)
    // The gateway registers a subscription only once its replay is under way: a second subscribe of
    // the same job sent before then could leave both live. So it waits until the first has settled.
    if (this.inflight.get(jobId)) next.deferred = true
    else this.sendWhenSettled(jobId, next)
  }

  unfollow(jobId) {
    if (!this.subs.delete(jobId)) return
    this.send({ op: 'unsubscribe', jobId })
  }

  /** Follows exactly the jobs of `wanted` (jobId -> after), unfollowing the rest. */
  sync(wanted) {
    for (const jobId of [...this.subs.keys()]) if (!wanted.has(jobId)) this.unfollow(jobId)
    for (const [jobId, after] of wanted) this.follow(jobId, after)
  }

  // internals

  setState(state, info) {
    this.state = state
    this.opts.onState?.(state, info)
  }

  send(msg) {
    if (this.socket && this.socket.readyState === 1) {
      this.socket.send(JSON.stringify(msg))
      return true
    }
    return false
  }

  sendSubscribe(jobId, sub) {
    sub.fresh = true
    if (!this.send({ op: 'subscribe', jobId, after: sub.after })) return
    this.inflight.set(jobId, (this.inflight.get(jobId) ?? 0) + 1)
    const socket = this.socket
    const sentAt = Date.now()
    setTimeout(() => {
      // No answer: the gateway ignores a subscribe of a job whose previous one it is still setting up.
      // Ask again (a duplicate answer or replay is harmless).
      if (this.socket !== socket || !this.inflight.get(jobId)) return
      if ((this.answeredAt.get(jobId) ?? -1) >= sentAt) return
      this.inflight.delete(jobId)
      const current = this.subs.get(jobId)
      if (!current) return
      current.deferred = false
      this.sendSubscribe(jobId, current)
    }, this.opts.answerTimeoutMs ?? 3000)
  }

  sendWhenSettled(jobId, sub) {
    const wait = (this.answeredAt.get(jobId) ?? 0) + (this.opts.settleMs ?? 250) - Date.now()
    if (wait <= 0) {
      this.sendSubscribe(jobId, sub)
      return
    }
    sub.deferred = true
    const socket = this.socket
    setTimeout(() => {
      if (this.socket !== socket || this.subs.get(jobId) !== sub || !sub.deferred) return
      sub.deferred = false
      if (this.inflight.get(jobId)) sub.deferred = true
      else this.sendSubscribe(jobId, sub)
    }, wait)
  }

  connect() {
    this.timer = null
    if (this.stopped) return
    this.setState('connecting', { attempt: this.attempt })
    let socket
    try {
      socket = new this.WebSocket(this.opts.url())
    } catch {
      this.scheduleReconnect()
      return
    }
    this.socket = socket
    socket.onopen = () => {
      if (socket !== this.socket) return
      this.attempt = 0
      this.setState('open')
      this.forgetSocket()
      for (const [jobId, sub] of this.subs) {
        sub.deferred = false
        this.sendSubscribe(jobId, sub)
      }
    }
    socket.onmessage = (e) => {
      if (socket !== this.socket) return
      let msg
      try {
        msg = JSON.parse(typeof e.data === 'string' ? e.data : String(e.data))
      } catch {
        return
      }
      if (msg && typeof msg.op === 'string') this.onNotice(msg)
      else if (msg && typeof msg.jobId === 'string' && typeof msg.seq === 'number') this.onEvent(msg)
    }
    socket.onclose = () => {
      if (socket !== this.socket) return
      this.socket = null
      this.forgetSocket()
      this.scheduleReconnect()
    }
    // An error is followed by close, which reconnects.
    socket.onerror = () => {}
  }

  scheduleReconnect() {
    if (this.stopped || this.timer) return
    const delayMs = backoffDelay(this.attempt, this.opts.backoff)
    this.attempt++
    this.setState('waiting', { delayMs, attempt: this.attempt })
    this.timer = setTimeout(() => this.connect(), delayMs)
  }

  dropSocket() {
    if (this.timer) clearTimeout(this.timer)
    this.timer = null
    const socket = this.socket
    this.socket = null
    this.forgetSocket()
    if (socket) {
      socket.onopen = socket.onmessage = socket.onclose = socket.onerror = null
      try {
        socket.close()
      } catch {
        // already closed
      }
    }
  }

  /** What was in flight on a socket that is gone (the next one resubscribes every followed job). */
  forgetSocket() {
    this.inflight.clear()
    this.answeredAt.clear()
    for (const sub of this.subs.values()) sub.deferred = false
  }

  onEvent(event) {
    const sub = this.subs.get(event.jobId)
    if (sub && !this.inflight.get(event.jobId)) {
      if (event.seq === sub.after + 1 || (sub.fresh && event.seq > sub.after)) sub.after = event.seq
      sub.fresh = false
    }
    this.opts.onEvent(event)
  }

  onNotice(msg) {
    const jobId = typeof msg.jobId === 'string' ? msg.jobId : undefined
    const due = jobId === undefined ? 0 : (this.inflight.get(jobId) ?? 0)
    if (jobId !== undefined && due > 0 && (msg.op === 'subscribed' || msg.op === 'error')) {
      if (due === 1) this.inflight.delete(jobId)
      else this.inflight.set(jobId, due - 1)
      this.answeredAt.set(jobId, Date.now())
    }
    const sub = jobId === undefined ? undefined : this.subs.get(jobId)
    if (sub?.deferred && !this.inflight.get(jobId)) {
      // The earlier subscribe is answered: the waiting one goes out once it has settled.
      sub.deferred = false
      this.sendWhenSettled(jobId, sub)
      this.opts.onNotice?.(msg)
      return
    }
    if (sub && msg.op === 'error') {
      if (msg.error?.code === 'unavailable') {
        // The gateway could not reach its stores for a moment: ask again shortly.
        setTimeout(() => {
          if (this.subs.get(jobId) === sub && !this.inflight.get(jobId)) this.sendSubscribe(jobId, sub)
        }, this.opts.retrySubscribeMs ?? 1000)
      } else this.subs.delete(jobId)
    }
    this.opts.onNotice?.(msg)
  }
}
