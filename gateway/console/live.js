// Live updates: the page's one stream of events (a JobStream of stream.js, made and handed over by
// app.js), which jobs it follows, and who hears what it brings. Each event is applied to the job cache
// first; views then hear it with what changed.

import { applyEvent, jobs, store } from './state.js'
import { TERMINAL } from './stream.js'

const listeners = { event: [], notice: [], state: [] }
/** @type {import('./stream.js').JobStream | null} */
let stream = null

/**
 * Hears the stream: `onLive('event', (event, job, changed) => ...)` (`job`: the cached body or
 * undefined; `changed`: applyEvent's answer), `onLive('notice', (msg) => ...)`,
 * `onLive('state', (state, info) => ...)`.
 */
export function onLive(kind, fn) {
  listeners[kind].push(fn)
}

/** What the stream is given: the socket's URL (with the token) and the handlers that fan out to views. */
export const liveOptions = {
  url: () => {
    const u = new URL('/ws', location.href)
    u.protocol = u.protocol === 'https:' ? 'wss:' : 'ws:'
    const { token } = store.get()
    if (token) u.searchParams.set('token', token)
    return u.href
  },
  onEvent: (e) => {
    const job = jobs.get(e.jobId)
    const changed = job ? applyEvent(job, e) : false
    for (const fn of listeners.event) fn(e, job, changed)
  },
  onNotice: (msg) => {
    for (const fn of listeners.notice) fn(msg)
  },
  onState: (s, info) => {
    for (const fn of listeners.state) fn(s, info)
  },
}

/** Makes `s` (a JobStream made with `liveOptions`) the page's stream, and opens it. */
export function startLive(s) {
  stream = s
  stream.start()
}

/** Opens a new socket at once (a new token). */
export const restartLive = () => stream?.restart()

/** Whether the socket is open (the list refreshes itself only then). */
export const isLive = () => stream?.state === 'open'

/** Follows every unfinished job in the list, and the detail's job until its history is complete. */
export function syncFollows() {
  const { order, detail } = store.get()
  const wanted = new Map()
  for (const id of order) {
    const job = jobs.get(id)
    if (job && !TERMINAL.has(job.status)) wanted.set(id, job.seq ?? 0)
  }
  if (detail?.loaded && !detail.done) wanted.set(detail.jobId, 0)
  stream?.sync(wanted)
}
