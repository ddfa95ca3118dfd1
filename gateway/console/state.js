// The console's state: one store with explicit `update` and `subscribe` for what views share (the
// token, the list's order and paging, the job open in the detail, the connection), and the cache of
// job bodies, which live events change in place (hundreds a second) and which views redraw from once a
// frame (`markDirty`, `onFrame`).

import { TERMINAL } from './stream.js'

const TOKEN_KEY = 'gpu-jobs.apiToken'

/**
 * A small store: `get()` the state, `update(patch)` it (a shallow merge), and `subscribe(fn)` to hear
 * each update with its patch (`fn(state, patch)`); `subscribe` returns the unsubscribe function.
 */
export function createStore(initial) {
  let state = Object.freeze({ ...initial })
  const listeners = new Set()
  return {
    get: () => state,
    update(patch) {
      state = Object.freeze({ ...state, ...patch })
      for (const fn of listeners) fn(state, patch)
    },
    subscribe(fn) {
      listeners.add(fn)
      return () => listeners.delete(fn)
    },
  }
}

/**
 * token: the API token (kept in localStorage); order: the ids of the list, newest first; nextCursor:
 * the list's next page; listLoaded: whether a list has loaded once; detail: the job shown in the detail
 * panel (its own object, see job-detail.js), or null; everOpen: whether the socket has ever been open.
 */
export const store = createStore({
  token: localStorage.getItem(TOKEN_KEY) ?? '',
  order: [],
  nextCursor: null,
  listLoaded: false,
  detail: null,
  everOpen: false,
})

store.subscribe((state, patch) => {
  if (!('token' in patch)) return
  if (state.token) localStorage.setItem(TOKEN_KEY, state.token)
  else localStorage.removeItem(TOKEN_KEY)
})

/** @type {Map<string, any>} every job body known (list and detail), kept live by events */
export const jobs = new Map()

/** Stores a job body from the API, keeping the live state if the socket has brought newer events. */
export function mergeJob(body) {
  const cur = jobs.get(body.jobId)
  if (!cur) {
    jobs.set(body.jobId, body)
    return body
  }
  const liveIsNewer = (cur.seq ?? 0) > (body.seq ?? 0) && !TERMINAL.has(body.status)
  const keep = liveIsNewer
    ? { status: cur.status, progress: cur.progress, message: cur.message, attempt: cur.attempt, seq: cur.seq }
    : {}
  Object.assign(cur, body, keep)
  return cur
}

/**
 * Applies an event to a job's live state unless it is older than what the job shows. Returns false
 * (older), true (applied) or 'status' (applied, and the status changed).
 */
export function applyEvent(job, e) {
  if (e.seq <= (job.seq ?? 0)) return false
  const statusChanged = job.status !== e.status
  job.status = e.status
  job.progress = e.progress
  job.message = e.message
  job.attempt = e.attempt
  job.seq = e.seq
  job.updatedAt = e.timestamp
  return statusChanged ? 'status' : true
}

// Rendering is batched per animation frame: events can come in hundreds per second.

const dirty = new Set()
const frameHandlers = []
let frame = 0

/** Asks for a redraw at the next frame (of the job `jobId`, if given). */
export function markDirty(jobId) {
  if (jobId !== undefined) dirty.add(jobId)
  if (!frame) frame = requestAnimationFrame(flush)
}

/** Registers a redraw, called once a frame with the ids of the jobs changed since the last. */
export function onFrame(fn) {
  frameHandlers.push(fn)
}

function flush() {
  frame = 0
  const changed = new Set(dirty)
  dirty.clear()
  for (const fn of frameHandlers) fn(changed)
}
