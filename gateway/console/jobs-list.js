// The job list: loads a page (filtered by status and type, searched by id prefix or message, paged by
// cursor), keeps its rows live from the stream, and refreshes itself while the page is visible. The
// search and filters live in the location's query (`?q=&status=&type=`), so a reload or a shared link
// shows the same list.

import { api } from './api.js'
import { $, announce, h } from './dom.js'
import { pctText, shortId, timeEl } from './format.js'
import { typeOptions } from './job-types.js'
import { isLive, onLive, syncFollows } from './live.js'
import { jobs, markDirty, mergeJob, onFrame, store } from './state.js'

const PAGE_SIZE = 50
const REFRESH_MS = 15_000
/** Typing pauses this long before the search is sent. */
const SEARCH_DEBOUNCE_MS = 300
const CRITERIA = /** @type {const} */ (['q', 'status', 'type'])

/** @type {Map<string, {tr: HTMLElement, badge: HTMLElement, attempt: HTMLElement, bar: HTMLProgressElement, pct: HTMLElement, msg: HTMLElement}>} */
const rows = new Map()
/** The latest list request: an older answer arriving late is dropped. */
let listRequest = 0

/** What the list shows: the search text and the filters, as in the location's query. */
const criteria = (() => {
  const params = new URLSearchParams(location.search)
  return Object.fromEntries(CRITERIA.map((k) => [k, params.get(k) ?? '']))
})()

/** The controls of the criteria, by name. */
const controls = {
  q: /** @type {HTMLInputElement} */ ($('filter-q')),
  status: /** @type {HTMLSelectElement} */ ($('filter-status')),
  type: /** @type {HTMLSelectElement} */ ($('filter-type')),
}
for (const k of CRITERIA) controls[k].value = criteria[k]

const filters = () => ({ ...criteria })

/**
 * Whether a job belongs in the list as it is filtered and searched: the gateway's rule (an id that
 * starts with the text as typed, or a message that contains it in any case), for a job added here.
 */
export const matchesFilters = (job) => {
  const f = filters()
  const q = f.q
  const found = !q || job.jobId.startsWith(q) || (job.message ?? '').toLowerCase().includes(q.toLowerCase())
  return (!f.status || f.status === job.status) && (!f.type || f.type === job.type) && found
}

/** Takes the controls' values as the criteria, keeps them in the location, and loads the list anew. */
function applyCriteria() {
  let changed = false
  for (const k of CRITERIA) {
    const value = k === 'q' ? controls.q.value.trim() : controls[k].value
    if (criteria[k] !== value) changed = true
    criteria[k] = value
  }
  if (!changed) return
  const params = new URLSearchParams(location.search)
  for (const k of CRITERIA) {
    if (criteria[k]) params.set(k, criteria[k])
    else params.delete(k)
  }
  const query = params.toString()
  history.replaceState(history.state, '', `${location.pathname}${query ? `?${query}` : ''}${location.hash}`)
  void loadList({ fresh: true })
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
  if (f.q) q.set('q', f.q)
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
      : f.q
        ? `No jobs match “${f.q}”${f.status || f.type ? ' with these filters' : ''}. Clear the search to see all.`
        : f.status || f.type
          ? 'No jobs match these filters.'
          : 'No jobs yet: submit one with the form.',
  )
  renderPaging(order.length, nextCursor)
  markCurrentRow()
}

/** Says how many jobs are shown and whether there are more, and offers the next page. */
function renderPaging(count, nextCursor) {
  const { listLoaded } = store.get()
  const more = /** @type {HTMLButtonElement} */ ($('more'))
  more.hidden = !nextCursor
  more.textContent = `Load more (next ${PAGE_SIZE})`
  $('list-count').textContent =
    !listLoaded || count === 0
      ? ''
      : nextCursor
        ? `Showing 1–${count}; there are more.`
        : `Showing all ${count} ${count === 1 ? 'job' : 'jobs'}${filters().q || filters().status || filters().type ? (count === 1 ? ' that matches' : ' that match') : ''}.`
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
  // The cells' classes place them when the table is shown as cards (a narrow screen: tables.css).
  const tr = h(
    'tr',
    { 'data-job-id': job.jobId },
    h('td', { class: 'c-id' }, link),
    h('td', { class: 'c-type' }, job.type),
    h('td', { class: 'c-status' }, badge, attempt),
    h('td', { class: 'c-progress' }, h('div', { class: 'progress-cell' }, bar, pct), msg),
    h('td', { class: 'c-created time' }, timeEl(job.createdAt)),
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

/** Offers the job types (job-types.js) in the type filter, and selects the one the location names. */
export const offerTypeFilter = (types) => {
  controls.type.append(...typeOptions(types, { described: false }))
  if (criteria.type) controls.type.value = criteria.type
}

let searchTimer = 0
controls.q.addEventListener('input', () => {
  clearTimeout(searchTimer)
  searchTimer = window.setTimeout(applyCriteria, SEARCH_DEBOUNCE_MS)
})
$('filters').addEventListener('submit', (e) => {
  // Enter in the search box: now, not after the pause.
  e.preventDefault()
  clearTimeout(searchTimer)
  applyCriteria()
})
controls.status.addEventListener('change', applyCriteria)
controls.type.addEventListener('change', applyCriteria)
$('refresh').addEventListener('click', () => void loadList())
$('more').addEventListener('click', () => void loadList({ append: true }))

setInterval(() => {
  if (document.visibilityState === 'visible' && isLive()) void loadList({ quiet: true })
}, REFRESH_MS)
