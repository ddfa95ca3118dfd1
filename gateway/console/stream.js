// Resumable following of job events, for the web console (browsers load this file as is) and the CLI
// (which imports it under tsx): the one backoff formula of the clients, the reconnect loop, and the
// WebSocket stream that follows any number of jobs over one socket and resubscribes each from the last
// seq it delivered after a reconnect, so no event is lost. Events may still arrive twice (a replay after
// a resubscription): callers dedupe by seq (see `addEvent`). No DOM here, so it runs under Node too.

export const TERMINAL = new Set(['completed', 'failed', 'cancelled'])

/**
 * A percentage as every client writes it (the console and the CLI): a whole number, rounded down, so it
 * never shows more done than is. With a job's `status`, "100%" only when it has completed: a job at 100
 * that is still uploading, or failed there, says 99%. Without one (a GPU's utilisation) up to 100%.
 * @param {number} value 0 to 100
 * @param {string} [status]
 */
export function percentText(value, status) {
  if (status === 'completed') return '100%'
  const top = status === undefined ? 100 : 99
  const whole = Number.isFinite(value) ? Math.floor(value) : 0
  return `${Math.min(top, Math.max(0, whole))}%`
}

/**
 * A job id as the clients show it: a UUID by its first 8 characters (SHORT_ID_LENGTH in schema/common.ts:
 * every job route and CLI command takes them), others whole.
 */
export const shortJobId = (id) => (/^[0-9a-f]{8}-[0-9a-f]{4}-/i.test(id) ? id.slice(0, 8) : id)

/**
 * A job's attempt as every client writes it (the console's Attempt fact, the CLI's status): "n of max"
 * only while another attempt can still come; a completed job says how many it took, a failed or
 * cancelled one which attempt it ended on ("n of max" when that was the last allowed). The attempts a host's
 * shutdown interrupted are not counted against maxAttempts (the host's rule): `max` grows by them.
 * @param {{ attempt: number, maxAttempts: number, status: string, attempts?: { outcome: string | null, reason: string | null }[] }} job
 */
export function attemptText({ attempt: n, maxAttempts, status, attempts = [] }) {
  const max =
    maxAttempts + attempts.filter((a) => a.outcome === 'interrupted' && a.reason === 'shutdown').length
  if (status === 'completed') return `${n} ${n === 1 ? 'attempt' : 'attempts'}`
  if (!TERMINAL.has(status)) return n === 0 ? `not started (up to ${max})` : `${n} of ${max}`
  if (n === 0) return 'none (it never started)'
  return n === max ? `${n} of ${max}` : String(n)
}

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
 * A connection kept open until `close`: when it drops, the next one is opened after a backoff that
 * doubles per failed try and starts again from the shortest once a connection is up. A subclass opens
 * the connection in `connect()` and reports `opened()` and `dropped(cause)`.
 */
export class Reconnecting {
  /**
   * @param {{
   *   onState?: (state: 'connecting' | 'open' | 'waiting' | 'closed', info?: { delayMs?: number, attempt?: number, cause?: unknown }) => void,
   *   backoff?: { min?: number, max?: number, random?: () => number },
   * }} opts
   */
  constructor(opts) {
    this.opts = opts
    this.attempt = 0
    this.timer = null
    /** Timers of the current connection (see `later`). */
    this.timers = new Set()
    this.stopped = true
    this.state = 'closed'
  }

  /** Opens the connection (and keeps it open until `close`). */
  start() {
    this.stopped = false
    if (!this.connected() && !this.timer) this.connect()
  }

  /** Drops the connection and opens a new one at once (e.g. the token changed). */
  restart() {
    this.attempt = 0
    this.dropConnection()
    this.stopped = false
    this.connect()
  }

  close() {
    this.stopped = true
    this.dropConnection()
    this.setState('closed')
  }

  // for subclasses

  /** Whether a connection is open or being opened. */
  connected() {
    return false
  }

  /** Opens a connection; called with no timer pending. */
  connect() {}

  /** Closes the current connection without reporting it as dropped; a subclass calls this at the end. */
  dropConnection() {
    if (this.timer) clearTimeout(this.timer)
    this.timer = null
    for (const t of this.timers) clearTimeout(t)
    this.timers.clear()
  }

  /**
   * Runs `fn` after `ms` unless the connection is dropped first: a stream that is closed leaves no timer
   * behind (a CLI process would wait for it before exiting).
   */
  later(fn, ms) {
    const t = setTimeout(() => {
      this.timers.delete(t)
      fn()
    }, ms)
    this.timers.add(t)
  }

  setState(state, info) {
    this.state = state
    this.opts.onState?.(state, info)
  }

  /** The connection is up: the next drop waits the shortest delay again. */
  opened() {
    this.attempt = 0
    this.setState('open')
  }

  /** The connection ended (`cause`: the error or close event that ended it): reconnect after a backoff. */
  dropped(cause) {
    if (this.stopped || this.timer) return
    const delayMs = backoffDelay(this.attempt, this.opts.backoff)
    this.attempt++
    this.setState('waiting', { delayMs, attempt: this.attempt, cause })
    this.timer = setTimeout(() => {
      this.timer = null
      if (!this.stopped) this.connect()
    }, delayMs)
  }
}

/**
 * @typedef {{ after: number | null, from: number, fresh: boolean, deferred: boolean }} Sub
 * `from`: the seq the subscription replays from (Infinity: from the current state); `after`: the last seq
 * delivered on it, the resume point (null until the first event of a subscription from the current
 * state; it moves only one seq at a time, or on the first event after the answer, which may skip over
 * events the gateway no longer keeps: a stray event can only make a resumption replay more, never less);
 * `deferred`: a resubscription waiting until an earlier subscribe of the same job has settled.
 */
export class JobStream extends Reconnecting {
  /**
   * @param {{
   *   url: () => string,
   *   onEvent: (event: any) => void,
   *   onNotice?: (notice: any) => void,
   *   onState?: (state: 'connecting' | 'open' | 'waiting' | 'closed', info?: { delayMs?: number, attempt?: number, cause?: unknown }) => void,
   *   WebSocket?: any,
   *   backoff?: { min?: number, max?: number, random?: () => number },
   *   retrySubscribeMs?: number,
   *   settleMs?: number,
   *   answerTimeoutMs?: number,
   * }} opts
   */
  constructor(opts) {
    super(opts)
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
  }

  /** Whether `jobId` is followed. */
  has(jobId) {
    return this.subs.has(jobId)
  }

  /** The resume point of a followed job, or undefined. */
  lastSeq(jobId) {
    return this.subs.get(jobId)?.after ?? undefined
  }

  /**
   * Follows a job from `after` (every event with a greater seq), or with `null` from its current state.
   * Following it already from that seq or earlier does nothing; asking for an earlier seq resubscribes
   * from there (a replay).
   */
  follow(jobId, after = 0) {
    const from = after ?? Number.POSITIVE_INFINITY
    const sub = this.subs.get(jobId)
    if (sub && sub.from <= from) return
    const next = { after, from, fresh: false, deferred: false }
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

  send(msg) {
    if (this.socket && this.socket.readyState === 1) {
      this.socket.send(JSON.stringify(msg))
      return true
    }
    return false
  }

  sendSubscribe(jobId, sub) {
    sub.fresh = true
    const msg = sub.after === null ? { op: 'subscribe', jobId } : { op: 'subscribe', jobId, after: sub.after }
    if (!this.send(msg)) return
    this.inflight.set(jobId, (this.inflight.get(jobId) ?? 0) + 1)
    const socket = this.socket
    const sentAt = Date.now()
    this.later(() => {
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
    this.later(() => {
      if (this.socket !== socket || this.subs.get(jobId) !== sub || !sub.deferred) return
      sub.deferred = false
      if (this.inflight.get(jobId)) sub.deferred = true
      else this.sendSubscribe(jobId, sub)
    }, wait)
  }

  connected() {
    return this.socket !== null
  }

  connect() {
    if (this.stopped) return
    this.setState('connecting', { attempt: this.attempt })
    let socket
    try {
      socket = new this.WebSocket(this.opts.url())
    } catch (err) {
      this.dropped(err)
      return
    }
    this.socket = socket
    /** The first error of this socket: what ended it, more telling than the close that follows. */
    let error
    socket.onopen = () => {
      if (socket !== this.socket) return
      this.opened()
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
    socket.onclose = (e) => {
      if (socket !== this.socket) return
      this.socket = null
      this.forgetSocket()
      this.dropped(error ?? e)
    }
    // An error is followed by close, which reconnects.
    socket.onerror = (e) => {
      error ??= e
    }
  }

  dropConnection() {
    super.dropConnection()
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
      if (sub.after === null || event.seq === sub.after + 1 || (sub.fresh && event.seq > sub.after))
        sub.after = event.seq
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
        this.later(() => {
          if (this.subs.get(jobId) === sub && !this.inflight.get(jobId)) this.sendSubscribe(jobId, sub)
        }, this.opts.retrySubscribeMs ?? 1000)
      } else this.subs.delete(jobId)
    }
    this.opts.onNotice?.(msg)
  }
}

/**
 * A connection that is one `fetch()` at a time, its response read to the end (Server-Sent Events read
 * with fetch, which can send a token header where an EventSource cannot): a subclass's `read(request)`
 * reads one response, aborted by `request` when closed, and resolves with what ended it.
 */
export class ReconnectingFetch extends Reconnecting {
  constructor(opts) {
    super(opts)
    /** @type {AbortController | null} */
    this.request = null
  }

  connected() {
    return this.request !== null
  }

  connect() {
    if (this.stopped) return
    this.setState('connecting', { attempt: this.attempt })
    const request = new AbortController()
    this.request = request
    void this.read(request).then((cause) => {
      // Dropped on purpose (closed, restarted): nothing to report.
      if (this.request !== request) return
      this.request = null
      this.dropped(cause)
    })
  }

  dropConnection() {
    super.dropConnection()
    this.request?.abort()
    this.request = null
  }

  /** Reads one response to its end; resolves with what ended it. */
  async read(_request) {
    return undefined
  }
}
