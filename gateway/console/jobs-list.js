// The job list: loads a page (filtered by status and type, paged by cursor), keeps its rows live from
// the stream, and refreshes itself while the page is visible.

import { api } from './api.js'
import { $, announce, h } from './dom.js'
import { fmtTime, pctText, shortId } from './format.js'
import { typeOptions } from './job-types.js'
import { isLive, onLive, syncFollows } from './live.js'
import { jobs, markDirty, mergeJob, onFrame, store } from './state.js'

const PAGE_SIZE = 50
const REFRESH_MS = 15_000

/** @type {Map<string, {tr: HTMLElement, badge: HTMLElement, attempt: HTMLElement, bar: HTMLProgressElement, pct: HTMLElement, msg: HTMLElement}>} */
const rows = new Map()
/** The latest list request: an older answer arriving late is dropped. */
let listRequest = 0

const filters = () => ({
  status: /** @type {HTMLSelectElement} */ ($('filter-status')).value,
  type: /** @type {HTMLSelectElement} */ ($('filter-type')).value,
})

/** Whether a job belongs in the list as it is filtered. */
export const matchesFilters = (job) => {
  const f = filters()
  return (!f.status || f.status === job.status) && (!f.type || f.type === job.type)
}

/**
 * Loads the list: as many jobs as it shows (at least a page), or with `append` the next page; `fresh`
 * starts again from one page (the filters changed); `quiet` keeps the list as it is on failure.
 */
export async function loadList({ append = false, quiet = false, fresh = false } = {}) {
  const { order, nextCursor } = store.get()
  const f = filters()
  const q = new URLSearchParams()
  const shown = fresh ? 0 : order.length
  q.set('limit', String(append ? PAGE_SIZE : Math.min(500, Math.max(PAGE_SIZE, shown))))
  if (f.status) q.set('status', f.status)
  if (f.type) q.set('type', f.type)
  if (append && nextCursor) q.set('cursor', nextCursor)
  const ticket = ++listRequest
  if (!quiet && !append) setListNote('Loading…')
  try {
    const page = await api(`/api/jobs?${q}`)
    if (ticket !== listRequest) return
    const ids = page.jobs.map((j) => mergeJob(j).jobId)
    const current = store.get().order
    store.update({
      order: append ? [...current, ...ids.filter((id) => !current.includes(id))] : ids,
      nextCursor: page.nextCursor,
      listLoaded: true,
    })
    // Forget jobs no longer shown (the detail's stays).
    const { order: now, detail } = store.get()
    for (const id of jobs.keys()) if (!now.includes(id) && detail?.jobId !== id) jobs.delete(id)
    syncFollows()
  } catch (err) {
    if (ticket !== listRequest) return
    if (!quiet || !store.get().listLoaded)
      setListNote(
        err.status === 401 ? 'Enter an API token to see your jobs.' : `Could not load jobs: ${err.message}`,
      )
  }
}

function setListNote(text) {
  const note = $('jobs-note')
  note.textContent = text
  note.hidden = !text
}

/**
 * Shows the store's order, reusing the rows already there: a refresh moves nothing that has not moved,
 * so keyboard focus and a screen reader's place in the table survive it.
 */
function renderList() {
  const { order, nextCursor } = store.get()
  const tbody = $('job-rows')
  const shown = new Set(order)
  for (const [id, row] of rows)
    if (!shown.has(id)) {
      row.tr.remove()
      rows.delete(id)
    }
  let prev = null
  for (const id of order) {
    const job = jobs.get(id)
    if (!job) continue
    const existing = rows.get(id)
    if (existing) updateRow(job)
    const tr = existing ? existing.tr : buildRow(job)
    const slot = prev ? prev.nextSibling : tbody.firstChild
    if (slot !== tr) tbody.insertBefore(tr, slot)
    prev = tr
  }
  const f = filters()
  setListNote(
    order.length
      ? ''
      : f.status || f.type
        ? 'No jobs match these filters.'
        : 'No jobs yet: submit one with the form.',
  )
  $('more').hidden = !nextCursor
  markCurrentRow()
}

function buildRow(job) {
  const link = h(
    'a',
    { href: `#job=${encodeURIComponent(job.jobId)}`, class: 'job-link', title: job.jobId },
    shortId(job.jobId),
  )
  const badge = h('span', { class: 'badge' })
  const attempt = h('span', { class: 'attempt' })
  const bar = /** @type {HTMLProgressElement} */ (
    h('progress', { max: '100', 'aria-label': `Progress of job ${shortId(job.jobId)}` })
  )
  const pct = h('span', { class: 'pct' })
  const msg = h('span', { class: 'message' })
  const tr = h(
    'tr',
    { 'data-job-id': job.jobId },
    h('td', {}, link),
    h('td', {}, job.type),
    h('td', {}, badge, attempt),
    h('td', {}, h('div', { class: 'progress-cell' }, bar, pct), msg),
    h('td', { class: 'time' }, h('time', { datetime: job.createdAt }, fmtTime(job.createdAt))),
  )
  tr.addEventListener('click', (e) => {
    // The detail is at #job=<id>: the router opens it.
    if (!(/** @type {HTMLElement} */ (e.target).closest('a')))
      location.hash = `job=${encodeURIComponent(job.jobId)}`
  })
  rows.set(job.jobId, { tr, badge, attempt, bar, pct, msg })
  updateRow(job)
  return tr
}

function updateRow(job) {
  const row = rows.get(job.jobId)
  if (!row) return
  row.tr.dataset.status = job.status
  row.badge.textContent = job.status
  row.badge.dataset.status = job.status
  row.attempt.textContent =
    job.attempt > 1 || job.status === 'retrying' ? `attempt ${job.attempt}/${job.maxAttempts}` : ''
  row.bar.value = job.progress
  row.bar.dataset.status = job.status
  row.pct.textContent = pctText(job.progress, job.status)
  row.msg.textContent = job.message
  row.msg.title = job.message
}

function markCurrentRow() {
  const { detail } = store.get()
  for (const [id, row] of rows) {
    if (detail?.jobId === id) row.tr.setAttribute('aria-current', 'true')
    else row.tr.removeAttribute('aria-current')
  }
}

store.subscribe((_state, patch) => {
  if ('order' in patch || 'nextCursor' in patch) renderList()
  else if ('detail' in patch) markCurrentRow()
})

onLive('event', (e, job, changed) => {
  if (!changed) return
  markDirty(e.jobId)
  if (changed === 'status' && store.get().order.includes(e.jobId))
    announce(`Job ${shortId(e.jobId)} (${job.type}) ${e.status}`)
})

onFrame((changed) => {
  for (const id of changed) {
    const job = jobs.get(id)
    if (job) updateRow(job)
  }
})

/** Offers the job types (job-types.js) in the type filter. */
export const offerTypeFilter = (types) => $('filter-type').append(...typeOptions(types, { described: false }))

$('filter-status').addEventListener('change', () => void loadList({ fresh: true }))
$('filter-type').addEventListener('change', () => void loadList({ fresh: true }))
$('refresh').addEventListener('click', () => void loadList())
$('more').addEventListener('click', () => void loadList({ append: true }))

setInterval(() => {
  if (document.visibilityState === 'visible' && isLive()) void loadList({ quiet: true })
}, REFRESH_MS)
