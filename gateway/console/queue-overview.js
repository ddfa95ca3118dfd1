// The queue overview, the strip under the top bar on every view: how many jobs wait, run and wait to
// retry, how long the oldest has waited, what ended in the last hour, the unfinished jobs by type and
// BullMQ's own counts (GET /api/queue). Refreshed every few seconds while the page is visible, and soon
// after a job the page follows changes status or the list changes (a job submitted here).

import { api } from './api.js'
import { $, h, hideBanner, showBanner } from './dom.js'
import { fmtDuration } from './format.js'
import { onLive } from './live.js'
import { store } from './state.js'

const REFRESH_MS = 5_000
/** Many jobs change status at once (a batch finishing): one request for them all. */
const SETTLE_MS = 300

let timer = 0
let settle = 0
let inFlight = false
/** Asked for while a load was under way: its answer may predate what was asked about, so load again. */
let again = false

/**
 * The strip's counts: the job records' statuses, as the job list shows them (with a token, one's own). Not
 * BullMQ's states: its `delayed` holds retry backoffs and queued jobs put back until a host with their engine
 * or GPU memory is free alike, and its `failed` the cancelled jobs too. Those are in the details.
 */
function counts(q) {
  const types = Object.values(q.byType)
  const sum = (pick) => types.reduce((n, t) => n + pick(t), 0)
  return {
    waiting: sum((t) => t.queued),
    running: sum((t) => t.running),
    retrying: sum((t) => t.retrying),
  }
}

/** BullMQ's states, the whole queue's, in words. */
function bullmqText(s) {
  const parts = [
    `${s.waiting + s.prioritized} waiting`,
    `${s.active} active`,
    `${s.delayed} delayed (retry backoffs, and jobs put back until a host can take them)`,
    `${s.failed} failed (cancelled ones too)`,
    `${s.completed} completed`,
  ]
  return `BullMQ, the whole queue: ${parts.join(', ')}.`
}

function render(q) {
  const c = counts(q)
  for (const [name, n] of Object.entries(c)) {
    const el = $(`q-${name}`)
    el.textContent = String(n)
    const item = /** @type {HTMLElement} */ (el.parentElement)
    item.dataset.nonzero = String(n > 0)
  }
  $('q-oldest').textContent =
    q.oldestWaitingSec === null ? 'nothing waits' : `oldest waiting ${fmtDuration(q.oldestWaitingSec * 1000)}`
  $('q-hour').textContent = `last hour: ${q.lastHour.completed} completed, ${q.lastHour.failed} failed`
  const rows = Object.entries(q.byType).map(([type, t]) =>
    h(
      'tr',
      { 'data-type': type },
      h('th', { scope: 'row' }, type),
      h('td', {}, String(t.queued)),
      h('td', {}, String(t.running)),
      h('td', {}, String(t.retrying)),
    ),
  )
  $('queue-type-rows').replaceChildren(...rows)
  // The strip's title says by type what its numbers hide, for a pointer that rests on it.
  $('queue-counts').title = Object.entries(q.byType)
    .map(([type, t]) => `${type}: ${t.queued} queued, ${t.running} running, ${t.retrying} retrying`)
    .join('\n')
  $('queue-types-note').textContent = store.get().token
    ? 'The counts: the jobs of your token. The oldest waiting: the whole queue’s.'
    : 'The counts: from the job records.'
  $('queue-bullmq').textContent = bullmqText(q.byState)
}

function setNote(text) {
  const note = $('queue-note')
  note.textContent = text
  note.hidden = !text
}

/** Loads the overview now (while a load is under way, once more after it). */
export async function refreshQueue() {
  if (inFlight) {
    again = true
    return
  }
  inFlight = true
  try {
    render(await api('/api/queue'))
    $('queue-strip').dataset.state = 'ok'
    setNote('')
    hideBanner('queue')
  } catch (err) {
    $('queue-strip').dataset.state = 'error'
    if (err.status === 401) setNote('Enter an API token to see the queue.')
    else {
      setNote('Queue unknown')
      if (err.status === 503 || err.status === 0)
        showBanner(
          `The queue cannot be read (${err.message}). Retrying every ${REFRESH_MS / 1000} s.`,
          'queue',
        )
    }
  } finally {
    inFlight = false
    if (again) {
      again = false
      void refreshQueue()
    }
  }
}

const soon = () => {
  clearTimeout(settle)
  settle = window.setTimeout(() => void refreshQueue(), SETTLE_MS)
}

/** Starts the strip: a load now, then every few seconds while the page is visible. */
export function startQueueOverview() {
  void refreshQueue()
  clearInterval(timer)
  timer = window.setInterval(() => {
    if (document.visibilityState === 'visible') void refreshQueue()
  }, REFRESH_MS)
}

onLive('event', (_e, _job, changed) => {
  if (changed === 'status') soon()
})
store.subscribe((_state, patch) => {
  if ('order' in patch || 'token' in patch) soon()
})
document.addEventListener('visibilitychange', () => {
  if (document.visibilityState === 'visible') soon()
})
