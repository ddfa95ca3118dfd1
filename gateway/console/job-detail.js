// The detail panel of one job (`#job=<id>`): its state live, facts, error, result, parameters,
// artifacts and the whole history of its events; cancel.

import { api, jobPath } from './api.js'
import { renderArtifacts } from './artifacts.js'
import { $, h } from './dom.js'
import { eventTime, fmtDuration, fmtTime, pctText } from './format.js'
import { onLive, syncFollows } from './live.js'
import { jobs, markDirty, mergeJob, onFrame, store } from './state.js'
import { addEvent, TERMINAL } from './stream.js'

const dialog = /** @type {HTMLDialogElement} */ ($('detail'))

/** Opens the detail the location's hash names (`#job=<id>`), or closes it. */
export function route() {
  const m = /^#job=(.+)$/.exec(location.hash)
  if (m) void showDetail(decodeURIComponent(m[1]))
  else if (dialog.open) dialog.close()
}

/**
 * Shows a job in the detail panel. The detail's own state: `history` (seq -> event), `seqs` (the rows
 * shown, in order), `newEvents` (waiting for the next frame), `done` (its history is complete).
 */
export async function showDetail(jobId) {
  if (store.get().detail?.jobId === jobId) {
    if (!dialog.open) dialog.showModal()
    return
  }
  const d = {
    jobId,
    loaded: false,
    history: new Map(),
    seqs: [],
    newEvents: [],
    done: false,
    liveKey: '',
    artifactsKey: '',
  }
  store.update({ detail: d })
  $('d-id').textContent = jobId
  $('d-loading').textContent = 'Loading…'
  $('d-loading').hidden = false
  $('d-content').hidden = true
  $('d-event-rows').replaceChildren()
  $('d-events-count').textContent = ''
  $('d-events-note').hidden = true
  $('d-action-status').textContent = ''
  $('d-download-status').textContent = ''
  if (!dialog.open) dialog.showModal()
  try {
    const body = await api(jobPath(jobId))
    if (store.get().detail !== d) return
    mergeJob(body)
    d.loaded = true
    $('d-loading').hidden = true
    $('d-content').hidden = false
    renderDetail()
    syncFollows()
  } catch (err) {
    if (store.get().detail !== d) return
    $('d-loading').textContent =
      err.status === 404 ? `There is no job "${jobId}".` : `Could not load the job: ${err.message}`
  }
}

/** Loads a job's stored state again (result, error, artifacts come with it). */
export async function refreshJob(jobId) {
  try {
    const body = await api(jobPath(jobId))
    mergeJob(body)
    const { detail } = store.get()
    if (detail?.jobId === jobId && detail.loaded) renderDetail()
    markDirty(jobId)
  } catch {
    // The next event or refresh tries again.
  }
}

function renderDetail() {
  const d = store.get().detail
  const job = d && jobs.get(d.jobId)
  if (!job) return
  $('d-type').textContent = job.type
  $('d-created').textContent = fmtTime(job.createdAt)
  $('d-started').textContent = fmtTime(job.startedAt)
  $('d-finished').textContent = job.finishedAt
    ? `${fmtTime(job.finishedAt)}${job.startedAt ? ` (took ${fmtDuration(Date.parse(job.finishedAt) - Date.parse(job.startedAt))})` : ''}`
    : '—'
  $('d-next-wrap').hidden = !job.nextAttemptAt
  $('d-next').textContent = fmtTime(job.nextAttemptAt)

  const err = job.error
  $('d-error-section').hidden = !err
  if (err) {
    $('d-error-code').textContent = err.code
    $('d-error-reason').textContent = err.reason
    $('d-error-message').textContent = err.message
  }

  const hasResult = job.result !== null && job.result !== undefined
  $('d-result-section').hidden = !hasResult
  $('d-result').textContent = hasResult ? JSON.stringify(job.result, null, 2) : ''
  $('d-params').textContent = JSON.stringify(job.params, null, 2)
  renderArtifacts(d, job)
  renderDetailLive()
}

function renderDetailLive() {
  const d = store.get().detail
  const job = d && jobs.get(d.jobId)
  if (!job) return
  const badge = $('d-status')
  badge.textContent = job.status
  badge.dataset.status = job.status
  $('d-pct').textContent = pctText(job.progress, job.status)
  $('d-message').textContent = job.message
  const bar = /** @type {HTMLProgressElement} */ ($('d-progress'))
  bar.value = job.progress
  bar.dataset.status = job.status
  $('d-attempt').textContent = `${job.attempt} of ${job.maxAttempts}`
  $('d-updated').textContent = fmtTime(job.updatedAt)
  dialog.dataset.status = job.status
  const cancel = /** @type {HTMLButtonElement} */ ($('d-cancel'))
  cancel.hidden = TERMINAL.has(job.status)
  // Screen readers hear the status, and progress in steps of 10%, not every event.
  const key = `${job.status}:${job.status === 'running' ? Math.floor(job.progress / 10) : ''}`
  if (key !== d.liveKey) {
    d.liveKey = key
    $('d-live').textContent =
      `${job.status}, ${pctText(job.progress, job.status)}${job.message ? `: ${job.message}` : ''}`
  }
}

/** Adds the events that arrived since the last frame to the history table, in seq order. */
function renderNewEvents(d) {
  const tbody = $('d-event-rows')
  const wrap = tbody.closest('.events-wrap')
  // Like `tail -f`: stay at the newest event unless the reader has scrolled up.
  const atBottom = wrap.scrollHeight - wrap.scrollTop - wrap.clientHeight < 24
  const fresh = d.newEvents.sort((a, b) => a.seq - b.seq)
  d.newEvents = []
  const tail = document.createDocumentFragment()
  for (const e of fresh) {
    const tr = h(
      'tr',
      { 'data-seq': String(e.seq) },
      h('td', {}, String(e.seq)),
      h(
        'td',
        { class: 'time' },
        h('time', { datetime: e.timestamp }, eventTime.format(new Date(e.timestamp))),
      ),
      h('td', {}, e.status),
      h('td', {}, pctText(e.progress, e.status)),
      h('td', { class: 'message' }, e.message),
    )
    const last = d.seqs.at(-1)
    if (last === undefined || e.seq > last) {
      d.seqs.push(e.seq)
      tail.append(tr)
    } else {
      // An older event (a replay after a resubscription): insert it in place.
      if (tail.childNodes.length) tbody.append(tail)
      let i = d.seqs.findIndex((s) => s > e.seq)
      if (i < 0) i = d.seqs.length
      d.seqs.splice(i, 0, e.seq)
      tbody.insertBefore(tr, tbody.children[i] ?? null)
    }
  }
  tbody.append(tail)
  if (atBottom) wrap.scrollTop = wrap.scrollHeight
  $('d-events-count').textContent = `(${d.seqs.length})`
  const first = d.seqs[0]
  const note = $('d-events-note')
  note.hidden = !(d.done && first !== undefined && first > 1)
  note.textContent = `Events before #${first} are no longer kept.`
}

onLive('event', (e, _job, changed) => {
  const d = store.get().detail
  if (d && d.jobId === e.jobId) {
    if (addEvent(d.history, e)) d.newEvents.push(e)
    if (TERMINAL.has(e.status) && !d.done) {
      d.done = true
      queueMicrotask(syncFollows)
    }
    markDirty()
  }
  if (changed === 'status' && TERMINAL.has(e.status)) {
    // Result, error, artifacts and finish time come with the stored state.
    void refreshJob(e.jobId)
    queueMicrotask(syncFollows)
  }
})

onLive('notice', (msg) => {
  if (msg.op !== 'error') return
  if (msg.jobId && store.get().detail?.jobId === msg.jobId && msg.error?.code === 'not_found')
    $('d-action-status').textContent = 'This job cannot be followed live (not found for this token).'
  if (!msg.jobId) console.warn('console: gateway says', msg.error)
})

onFrame((changed) => {
  const d = store.get().detail
  if (d?.loaded && changed.has(d.jobId)) renderDetailLive()
  if (d?.newEvents.length) renderNewEvents(d)
})

dialog.addEventListener('close', () => {
  store.update({ detail: null })
  if (location.hash.startsWith('#job=')) history.replaceState(null, '', location.pathname + location.search)
  syncFollows()
})
$('detail-close').addEventListener('click', () => dialog.close())
dialog.addEventListener('click', (e) => {
  // A click on the backdrop (outside the drawer) closes it.
  if (e.target === dialog) {
    const r = dialog.getBoundingClientRect()
    const inside = e.clientX >= r.left && e.clientX <= r.right && e.clientY >= r.top && e.clientY <= r.bottom
    if (!inside) dialog.close()
  }
})

$('d-cancel').addEventListener('click', async () => {
  const d = store.get().detail
  if (!d) return
  const button = /** @type {HTMLButtonElement} */ ($('d-cancel'))
  const status = $('d-action-status')
  button.disabled = true
  status.textContent = 'Cancelling…'
  try {
    const r = await api(`${jobPath(d.jobId)}/cancel`, { method: 'POST' })
    status.textContent = r.status === 'cancelled' ? 'Cancelled.' : 'Cancel requested: stopping the job…'
  } catch (err) {
    status.textContent =
      err.status === 409 ? 'This job has already finished.' : `Could not cancel: ${err.message}`
    if (err.status === 409) void refreshJob(d.jobId)
  } finally {
    button.disabled = false
  }
})
