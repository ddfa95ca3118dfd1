// The detail panel of one job (`#job=<id>`): its state live and facts, then three tabs: Overview (error,
// attempts, loss curve, artifacts, result, parameters), Logs and the whole history of its Events; and
// its actions (job-actions.js). Each part renders from the job cache in its own module.

import { api, jobPath } from './api.js'
import { renderArtifacts } from './artifacts.js'
import { renderAttempts } from './attempts.js'
import { $, h } from './dom.js'
import { eventTime, fmtDuration, pctText, setTime, timeEl } from './format.js'
import { initActions, renderActions } from './job-actions.js'
import { pickLogAttempt, renderLogs, showLogs, stopLogs } from './job-logs.js'
import { onLive, syncFollows } from './live.js'
import { addLossEvent, loadLoss, renderLoss } from './loss-chart.js'
import { renderParams } from './params-view.js'
import { jobs, markDirty, mergeJob, onFrame, store } from './state.js'
import { addEvent, attemptText, TERMINAL } from './stream.js'
import { tabs } from './tabs.js'

const dialog = /** @type {HTMLDialogElement} */ ($('detail'))

const selectTab = tabs($('d-tabs'), (tabId) => {
  const d = store.get().detail
  const job = d && jobs.get(d.jobId)
  if (d?.loaded && job) showLogs(d, job, tabId === 'd-tab-logs')
})

/** Opens the detail the location's hash names (`#job=<id>`), or closes it. */
export function route() {
  const m = /^#job=(.+)$/.exec(location.hash)
  if (m) void showDetail(decodeURIComponent(m[1]))
  else if (dialog.open) dialog.close()
}

/**
 * Shows a job in the detail panel. The detail's own state: `history` (seq -> event), `seqs` (the rows
 * shown, in order), `newEvents` (waiting for the next frame), `done` (its history is complete), the keys
 * of what is drawn, `stderrTails` (attempts.js), `logs` (job-logs.js), `loss` (loss-chart.js) and
 * `actionNote` (job-actions.js).
 */
export async function showDetail(jobId) {
  if (store.get().detail?.jobId === jobId) {
    if (!dialog.open) dialog.showModal()
    return
  }
  stopLogs(store.get().detail)
  const d = {
    jobId,
    loaded: false,
    history: new Map(),
    seqs: [],
    newEvents: [],
    done: false,
    liveKey: '',
    artifactsKey: '',
    attemptsKey: '',
    stderrTails: new Map(),
    actionNote: null,
  }
  store.update({ detail: d })
  selectTab('d-tab-overview')
  $('d-id').textContent = jobId
  $('d-loading').textContent = 'Loading…'
  $('d-loading').hidden = false
  $('d-content').hidden = true
  $('d-event-rows').replaceChildren()
  $('d-events-count').textContent = ''
  $('d-events-note').hidden = true
  $('d-action-status').textContent = ''
  $('d-download-status').textContent = ''
  $('d-attempts').replaceChildren()
  $('d-log-lines').replaceChildren()
  $('d-log-attempt').replaceChildren()
  $('d-loss').replaceChildren()
  $('d-loss-section').hidden = true
  if (!dialog.open) dialog.showModal()
  try {
    const body = await api(jobPath(jobId))
    if (store.get().detail !== d) return
    if (body.jobId !== jobId) {
      // Named by a short id (the start of its id): the detail, and the location, go by the whole id.
      d.jobId = body.jobId
      $('d-id').textContent = body.jobId
      history.replaceState(history.state, '', `#job=${encodeURIComponent(body.jobId)}`)
    }
    mergeJob(body)
    d.loaded = true
    $('d-loading').hidden = true
    $('d-content').hidden = false
    renderDetail()
    loadLoss(d)
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
  setTime($('d-created'), job.createdAt)
  setTime($('d-started'), job.startedAt)
  const took =
    job.finishedAt && job.startedAt
      ? ` (took ${fmtDuration(Date.parse(job.finishedAt) - Date.parse(job.startedAt))})`
      : ''
  $('d-finished').replaceChildren(timeEl(job.finishedAt), took)
  $('d-next-wrap').hidden = !job.nextAttemptAt
  setTime($('d-next'), job.nextAttemptAt)

  // A completed job may keep the error of an attempt it retried after: that one is in its attempts.
  const err = job.status === 'completed' ? null : job.error
  $('d-error-section').hidden = !err
  $('d-error-heading').textContent = TERMINAL.has(job.status) ? 'Error' : 'Error of the last attempt'
  if (err) {
    $('d-error-code').textContent = err.code
    $('d-error-reason').textContent = err.reason
    $('d-error-message').textContent = err.message
  }

  const hasResult = job.result !== null && job.result !== undefined
  $('d-result-section').hidden = !hasResult
  $('d-result').textContent = hasResult ? JSON.stringify(job.result, null, 2) : ''
  renderParams(job)
  renderAttempts(d, job)
  renderArtifacts(d, job)
  renderLogs(d, job)
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
  $('d-attempt').textContent = attemptText(job)
  setTime($('d-updated'), job.updatedAt)
  dialog.dataset.status = job.status
  renderActions(d, job)
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
    addLossEvent(d, e)
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
  } else if (changed === 'status' && d?.jobId === e.jobId) {
    // An attempt started or ended: the detail's attempts come with the stored state.
    void refreshJob(e.jobId)
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
  if (d?.loaded) renderLoss(d)
})

dialog.addEventListener('close', () => {
  stopLogs(store.get().detail)
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

$('d-log-attempt').addEventListener('change', (e) => {
  const d = store.get().detail
  const job = d && jobs.get(d.jobId)
  if (job) pickLogAttempt(d, job, Number(/** @type {HTMLSelectElement} */ (e.target).value))
})

initActions({ refresh: refreshJob })
