// The web console: submit jobs, follow them live over one WebSocket, look at a job's details, events and
// artifacts, cancel it. Plain ES module, no build step, no dependencies; talks only to this gateway.

import { addEvent, JobStream, TERMINAL } from './stream.js'

const TOKEN_KEY = 'gpu-jobs.apiToken'
const PAGE_SIZE = 50
const REFRESH_MS = 15_000

const $ = (id) => /** @type {HTMLElement} */ (document.getElementById(id))

/** Creates an element: `h('a', { href, class: 'x' }, 'text', child)`. */
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag)
  for (const [k, v] of Object.entries(attrs))
    if (v !== undefined && v !== null && v !== false) el.setAttribute(k, v)
  for (const c of children) if (c !== undefined && c !== null) el.append(c)
  return el
}

// formatting

const pctText = (p) => `${p >= 100 ? 100 : Math.floor(p)}%`
const shortId = (id) => (/^[0-9a-f]{8}-[0-9a-f]{4}-/i.test(id) ? id.slice(0, 8) : id)
const dateTime = new Intl.DateTimeFormat(undefined, { dateStyle: 'medium', timeStyle: 'medium' })
const timeOnly = new Intl.DateTimeFormat(undefined, { timeStyle: 'medium' })
const eventTime = new Intl.DateTimeFormat(undefined, {
  hour: '2-digit',
  minute: '2-digit',
  second: '2-digit',
  fractionalSecondDigits: 3,
  hour12: false,
})

function fmtTime(iso) {
  if (!iso) return '—'
  const d = new Date(iso)
  return d.toDateString() === new Date().toDateString() ? timeOnly.format(d) : dateTime.format(d)
}

function fmtBytes(n) {
  if (n < 1024) return `${n} B`
  const units = ['KiB', 'MiB', 'GiB', 'TiB']
  let v = n
  let i = -1
  do {
    v /= 1024
    i++
  } while (v >= 1024 && i < units.length - 1)
  return `${v.toFixed(v < 10 ? 1 : 0)} ${units[i]}`
}

function fmtDuration(ms) {
  if (ms < 1000) return `${ms} ms`
  const s = ms / 1000
  if (s < 60) return `${s.toFixed(1)} s`
  const m = Math.floor(s / 60)
  if (m < 60) return `${m} min ${Math.round(s % 60)} s`
  return `${Math.floor(m / 60)} h ${m % 60} min`
}

// API

class ApiError extends Error {
  constructor(status, code, message, issues = []) {
    super(message)
    this.status = status
    this.code = code
    this.issues = issues
  }
}

const state = {
  token: localStorage.getItem(TOKEN_KEY) ?? '',
  /** @type {Map<string, any>} every job body known (list and detail), kept live by events */
  jobs: new Map(),
  /** @type {string[]} the list, newest first */
  order: [],
  nextCursor: null,
  listLoaded: false,
  listRequest: 0,
  /** the job shown in the detail panel */
  detail: null,
  everOpen: false,
}

const authHeaders = () => (state.token ? { authorization: `Bearer ${state.token}` } : {})

async function request(path, { method = 'GET', body, retries = 1 } = {}) {
  const headers = { accept: 'application/json', ...authHeaders() }
  if (body !== undefined) headers['content-type'] = 'application/json'
  let res
  try {
    res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) })
  } catch {
    throw new ApiError(0, 'unreachable', 'The gateway cannot be reached.')
  }
  if (res.status === 429 && retries > 0) {
    // Over the token's rate limit (many jobs finishing at once): wait as told, then once more.
    const wait = Math.min(5, Number(res.headers.get('retry-after')) || 1)
    await new Promise((r) => setTimeout(r, wait * 1000))
    return request(path, { method, body, retries: retries - 1 })
  }
  const text = await res.text()
  let json = null
  try {
    json = text ? JSON.parse(text) : null
  } catch {
    json = null
  }
  if (!res.ok) {
    const e = json?.error
    const err = new ApiError(
      res.status,
      e?.code ?? `http_${res.status}`,
      e?.message ?? res.statusText,
      e?.issues ?? [],
    )
    if (res.status === 401)
      showBanner('This gateway needs an API token: enter it at the top right and press Save.')
    throw err
  }
  if (res.status !== 401) hideBanner('auth')
  return { status: res.status, json }
}

const api = async (path, opts) => (await request(path, opts)).json
const jobPath = (id) => `/api/jobs/${encodeURIComponent(id)}`

function showBanner(text, kind = 'auth') {
  const b = $('banner')
  b.textContent = text
  b.dataset.kind = kind
  b.hidden = false
}

function hideBanner(kind) {
  const b = $('banner')
  if (!kind || b.dataset.kind === kind) b.hidden = true
}

// live updates

const stream = new JobStream({
  url: () => {
    const u = new URL('/ws', location.href)
    u.protocol = u.protocol === 'https:' ? 'wss:' : 'ws:'
    if (state.token) u.searchParams.set('token', state.token)
    return u.href
  },
  onEvent,
  onNotice,
  onState: showConnection,
})

function showConnection(s, info) {
  const el = $('conn')
  el.dataset.state = s
  const text =
    s === 'open'
      ? 'Live'
      : s === 'waiting'
        ? `Connection lost: reconnecting in ${Math.max(1, Math.round((info?.delayMs ?? 0) / 1000))} s…`
        : s === 'connecting'
          ? state.everOpen
            ? 'Reconnecting…'
            : 'Connecting…'
          : 'Offline'
  $('conn-text').textContent = text
  if (s === 'open') {
    // Back after a break: jobs may have been added or finished meanwhile (followed ones resume by seq).
    if (state.everOpen) {
      void loadList({ quiet: true })
      if (state.detail) void refreshJob(state.detail.jobId)
    }
    state.everOpen = true
  }
}

/** Applies an event to a job's live state unless it is older than what the job shows. */
function applyEvent(job, e) {
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

function onEvent(e) {
  const job = state.jobs.get(e.jobId)
  const d = state.detail
  if (d && d.jobId === e.jobId) {
    if (addEvent(d.history, e)) d.newEvents.push(e)
    if (TERMINAL.has(e.status) && !d.done) {
      d.done = true
      queueMicrotask(syncFollows)
    }
    schedule()
  }
  if (!job) return
  const changed = applyEvent(job, e)
  if (!changed) return
  dirty.add(e.jobId)
  schedule()
  if (changed === 'status') {
    if (state.order.includes(e.jobId)) announce(`Job ${shortId(e.jobId)} (${job.type}) ${e.status}`)
    if (TERMINAL.has(e.status)) {
      // Result, error, artifacts and finish time come with the stored state.
      void refreshJob(e.jobId)
      queueMicrotask(syncFollows)
    }
  }
}

function onNotice(msg) {
  if (msg.op !== 'error') return
  if (msg.jobId && state.detail?.jobId === msg.jobId && msg.error?.code === 'not_found')
    $('d-action-status').textContent = 'This job cannot be followed live (not found for this token).'
  if (!msg.jobId) console.warn('console: gateway says', msg.error)
}

/** Follows every unfinished job in the list, and the detail's job until its history is complete. */
function syncFollows() {
  const wanted = new Map()
  for (const id of state.order) {
    const job = state.jobs.get(id)
    if (job && !TERMINAL.has(job.status)) wanted.set(id, job.seq ?? 0)
  }
  const d = state.detail
  if (d?.loaded && !d.done) wanted.set(d.jobId, 0)
  stream.sync(wanted)
}

// rendering is batched per animation frame: events can come in hundreds per second

const dirty = new Set()
let frame = 0

function schedule() {
  if (!frame) frame = requestAnimationFrame(flush)
}

function flush() {
  frame = 0
  for (const id of dirty) {
    const job = state.jobs.get(id)
    if (job) updateRow(job)
  }
  const d = state.detail
  if (d?.loaded && dirty.has(d.jobId)) renderDetailLive()
  dirty.clear()
  if (d?.newEvents.length) renderNewEvents()
}

function announce(text) {
  $('announcer').textContent = text
}

// job list

/** @type {Map<string, {tr: HTMLElement, badge: HTMLElement, attempt: HTMLElement, bar: HTMLProgressElement, pct: HTMLElement, msg: HTMLElement}>} */
const rows = new Map()

function mergeJob(body) {
  const cur = state.jobs.get(body.jobId)
  if (!cur) {
    state.jobs.set(body.jobId, body)
    return body
  }
  // Keep the live state if the socket has brought newer events than this body knew of.
  const liveIsNewer = (cur.seq ?? 0) > (body.seq ?? 0) && !TERMINAL.has(body.status)
  const keep = liveIsNewer
    ? { status: cur.status, progress: cur.progress, message: cur.message, attempt: cur.attempt, seq: cur.seq }
    : {}
  Object.assign(cur, body, keep)
  return cur
}

const filters = () => ({
  status: /** @type {HTMLSelectElement} */ ($('filter-status')).value,
  type: /** @type {HTMLSelectElement} */ ($('filter-type')).value,
})

const matchesFilters = (job) => {
  const f = filters()
  return (!f.status || f.status === job.status) && (!f.type || f.type === job.type)
}

async function loadList({ append = false, quiet = false } = {}) {
  const f = filters()
  const q = new URLSearchParams()
  q.set('limit', String(append ? PAGE_SIZE : Math.min(500, Math.max(PAGE_SIZE, state.order.length))))
  if (f.status) q.set('status', f.status)
  if (f.type) q.set('type', f.type)
  if (append && state.nextCursor) q.set('cursor', state.nextCursor)
  const ticket = ++state.listRequest
  if (!quiet && !append) setListNote('Loading…')
  try {
    const page = await api(`/api/jobs?${q}`)
    if (ticket !== state.listRequest) return
    const ids = page.jobs.map((j) => mergeJob(j).jobId)
    state.order = append ? [...state.order, ...ids.filter((id) => !state.order.includes(id))] : ids
    state.nextCursor = page.nextCursor
    state.listLoaded = true
    // Forget jobs no longer shown (the detail's stays).
    for (const id of state.jobs.keys())
      if (!state.order.includes(id) && state.detail?.jobId !== id) state.jobs.delete(id)
    renderList()
    syncFollows()
  } catch (err) {
    if (ticket !== state.listRequest) return
    if (!quiet || !state.listLoaded)
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
 * Shows `state.order`, reusing the rows already there: a refresh moves nothing that has not moved, so
 * keyboard focus and a screen reader's place in the table survive it.
 */
function renderList() {
  const tbody = $('job-rows')
  const shown = new Set(state.order)
  for (const [id, row] of rows)
    if (!shown.has(id)) {
      row.tr.remove()
      rows.delete(id)
    }
  let prev = null
  for (const id of state.order) {
    const job = state.jobs.get(id)
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
    state.order.length
      ? ''
      : f.status || f.type
        ? 'No jobs match these filters.'
        : 'No jobs yet: submit one with the form.',
  )
  $('more').hidden = !state.nextCursor
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
    if (!(/** @type {HTMLElement} */ (e.target).closest('a'))) openJob(job.jobId)
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
  row.pct.textContent = pctText(job.progress)
  row.msg.textContent = job.message
  row.msg.title = job.message
}

function markCurrentRow() {
  for (const [id, row] of rows) {
    if (state.detail?.jobId === id) row.tr.setAttribute('aria-current', 'true')
    else row.tr.removeAttribute('aria-current')
  }
}

// job detail

const dialog = /** @type {HTMLDialogElement} */ ($('detail'))

function openJob(jobId) {
  location.hash = `job=${encodeURIComponent(jobId)}`
}

function route() {
  const m = /^#job=(.+)$/.exec(location.hash)
  if (m) void showDetail(decodeURIComponent(m[1]))
  else if (dialog.open) dialog.close()
}

async function showDetail(jobId) {
  if (state.detail?.jobId === jobId) {
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
  state.detail = d
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
  markCurrentRow()
  try {
    const body = await api(jobPath(jobId))
    if (state.detail !== d) return
    mergeJob(body)
    d.loaded = true
    $('d-loading').hidden = true
    $('d-content').hidden = false
    renderDetail()
    syncFollows()
  } catch (err) {
    if (state.detail !== d) return
    $('d-loading').textContent =
      err.status === 404 ? `There is no job "${jobId}".` : `Could not load the job: ${err.message}`
  }
}

async function refreshJob(jobId) {
  try {
    const body = await api(jobPath(jobId))
    mergeJob(body)
    dirty.add(jobId)
    if (state.detail?.jobId === jobId && state.detail.loaded) renderDetail()
    schedule()
  } catch {
    // The next event or refresh tries again.
  }
}

function renderDetail() {
  const d = state.detail
  const job = d && state.jobs.get(d.jobId)
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
  renderArtifacts(job)
  renderDetailLive()
}

function renderDetailLive() {
  const d = state.detail
  const job = d && state.jobs.get(d.jobId)
  if (!job) return
  const badge = $('d-status')
  badge.textContent = job.status
  badge.dataset.status = job.status
  $('d-pct').textContent = pctText(job.progress)
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
      `${job.status}, ${pctText(job.progress)}${job.message ? `: ${job.message}` : ''}`
  }
}

function renderArtifacts(job) {
  const d = state.detail
  const key = JSON.stringify(job.artifacts)
  if (key === d.artifactsKey) return
  d.artifactsKey = key
  const list = job.artifacts ?? []
  $('d-artifacts-empty').hidden = list.length > 0
  $('d-artifacts-empty').textContent = TERMINAL.has(job.status) ? 'None.' : 'None yet.'
  $('d-artifacts').hidden = list.length === 0
  $('d-artifact-rows').replaceChildren(
    ...list.map((a) => {
      const name = a.path.split('/').pop() || 'artifact'
      const link = h(
        'a',
        { href: a.url, download: name, class: 'button', 'aria-label': `Download ${a.path}` },
        'Download',
      )
      link.addEventListener('click', (e) => {
        // A plain link cannot carry the token: fetch it with the header and save the blob.
        if (!state.token) return
        e.preventDefault()
        void downloadWithToken(a, name)
      })
      return h(
        'tr',
        {},
        h('td', {}, h('code', {}, a.path)),
        h('td', { class: 'time' }, fmtBytes(a.size)),
        h('td', {}, h('span', { class: 'sha', title: a.sha256 }, `${a.sha256.slice(0, 12)}…`)),
        h('td', {}, link),
      )
    }),
  )
}

async function sha256Hex(buffer) {
  if (!globalThis.crypto?.subtle) return null // only in secure contexts (https, localhost)
  const digest = await crypto.subtle.digest('SHA-256', buffer)
  return [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, '0')).join('')
}

async function downloadWithToken(artifact, name) {
  const status = $('d-download-status')
  status.textContent = `Downloading ${artifact.path}…`
  try {
    const res = await fetch(artifact.url, { headers: authHeaders() })
    if (!res.ok) {
      const body = await res.json().catch(() => null)
      throw new Error(body?.error?.message ?? `HTTP ${res.status}`)
    }
    const blob = await res.blob()
    const sum = await sha256Hex(await blob.arrayBuffer())
    if (sum && sum !== artifact.sha256) throw new Error('the checksum does not match the manifest')
    const url = URL.createObjectURL(blob)
    const a = h('a', { href: url, download: name, hidden: '' })
    dialog.append(a)
    a.click()
    a.remove()
    setTimeout(() => URL.revokeObjectURL(url), 60_000)
    status.textContent = `Saved ${name}${sum ? ' (SHA-256 verified)' : ''}.`
  } catch (err) {
    status.textContent = `Could not download ${artifact.path}: ${err.message}`
  }
}

/** Adds the events that arrived since the last frame to the history table, in seq order. */
function renderNewEvents() {
  const d = state.detail
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
      h('td', {}, pctText(e.progress)),
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

dialog.addEventListener('close', () => {
  state.detail = null
  markCurrentRow()
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
  const d = state.detail
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

// submit form

const form = /** @type {HTMLFormElement} */ ($('submit-form'))
const typeSelect = /** @type {HTMLSelectElement} */ ($('f-type'))

const activeFieldset = () =>
  /** @type {HTMLFieldSetElement} */ (form.querySelector(`fieldset[data-type="${typeSelect.value}"]`))

function showType() {
  for (const fs of form.querySelectorAll('fieldset[data-type]')) {
    const on = fs.dataset.type === typeSelect.value
    fs.hidden = !on
    fs.disabled = !on
  }
  clearErrors()
}

function setPath(obj, keys, value) {
  let o = obj
  for (const k of keys.slice(0, -1)) {
    o[k] ??= {}
    o = o[k]
  }
  o[keys.at(-1)] = value
}

/** The value of a control as the API wants it; undefined leaves it out (the default applies). */
function readControl(el, problems) {
  if (el.type === 'number') {
    if (el.validity.badInput) {
      problems.push({ path: el.name, message: 'must be a number' })
      return undefined
    }
    return el.value.trim() === '' ? undefined : Number(el.value)
  }
  const text = el.value.trim()
  if (text === '') return undefined
  if (el.dataset.kind === 'workflow' && text.startsWith('{')) {
    try {
      return JSON.parse(text)
    } catch {
      problems.push({ path: el.name, message: 'must be a template name or a valid JSON graph' })
      return undefined
    }
  }
  return el.tagName === 'TEXTAREA' ? el.value : text
}

function readForm() {
  const problems = []
  const body = { type: typeSelect.value, params: {} }
  for (const el of activeFieldset().querySelectorAll('[name]')) {
    const value = readControl(el, problems)
    if (value !== undefined) setPath(body.params, el.name.split('.').slice(1), value)
  }
  for (const el of $('options').querySelectorAll('[name]')) {
    const value = readControl(el, problems)
    if (value !== undefined) body[el.name] = value
  }
  return { body, problems }
}

/** The control an issue path is about: `params.inputs.seed`, or the nearest enclosing field. */
function fieldFor(path) {
  const scopes = [activeFieldset(), $('options')]
  for (let p = path; p; p = p.includes('.') ? p.slice(0, p.lastIndexOf('.')) : '') {
    if (p === 'type') return typeSelect
    for (const scope of scopes) {
      const el = scope.querySelector(`[name="${CSS.escape(p)}"]`)
      if (el) return el
    }
  }
  return null
}

function clearErrors() {
  for (const el of form.querySelectorAll('.field-error')) el.remove()
  for (const el of form.querySelectorAll('[aria-invalid]')) {
    el.removeAttribute('aria-invalid')
    const orig = /** @type {HTMLElement} */ (el).dataset.describedby
    if (orig) el.setAttribute('aria-describedby', orig)
    else el.removeAttribute('aria-describedby')
  }
  $('form-error').hidden = true
  $('form-error').replaceChildren()
}

function markField(el, message) {
  const errId = `${el.id}-error`
  const existing = document.getElementById(errId)
  if (existing) {
    existing.textContent += `; ${message}`
    return
  }
  const p = h('p', { class: 'field-error', id: errId }, message)
  const field = el.closest('.field') ?? el.parentElement
  field.append(p)
  if (!el.hasAttribute('aria-invalid')) el.dataset.describedby = el.getAttribute('aria-describedby') ?? ''
  el.setAttribute('aria-invalid', 'true')
  el.setAttribute('aria-describedby', `${el.dataset.describedby} ${errId}`.trim())
  const details = el.closest('details')
  if (details) details.open = true
}

function showIssues(issues, fallback) {
  const unplaced = []
  let first = null
  for (const issue of issues) {
    const el = fieldFor(issue.path)
    if (el) {
      markField(el, issue.message)
      first ??= el
    } else unplaced.push(issue)
  }
  const box = $('form-error')
  box.replaceChildren(
    first ? 'Please correct the highlighted fields.' : (fallback ?? 'The job was not accepted.'),
  )
  if (unplaced.length)
    box.append(h('ul', {}, ...unplaced.map((i) => h('li', {}, h('code', {}, i.path), ` ${i.message}`))))
  box.hidden = false
  if (first) first.focus()
  else box.focus()
}

form.addEventListener('submit', async (e) => {
  e.preventDefault()
  clearErrors()
  const status = $('submit-status')
  const { body, problems } = readForm()
  if (problems.length) {
    showIssues(problems)
    status.textContent = ''
    return
  }
  const button = /** @type {HTMLButtonElement} */ ($('submit-button'))
  button.disabled = true
  status.textContent = 'Submitting…'
  try {
    const r = await request('/api/train', { method: 'POST', body })
    const id = r.json.jobId
    status.replaceChildren(
      r.status === 202 ? 'Queued ' : 'Already submitted: ',
      h('a', { href: `#job=${encodeURIComponent(id)}` }, shortId(id)),
      '.',
    )
    $('opt-jobId').value = ''
    const job = mergeJob(await api(jobPath(id)))
    if (matchesFilters(job) && !state.order.includes(id)) {
      state.order.unshift(id)
      renderList()
    }
    syncFollows()
  } catch (err) {
    status.textContent = ''
    if (err.issues?.length) showIssues(err.issues, err.message)
    else {
      const box = $('form-error')
      box.replaceChildren(`Not submitted: ${err.message}`)
      box.hidden = false
    }
  } finally {
    button.disabled = false
  }
})

typeSelect.addEventListener('change', showType)
form.addEventListener('input', (e) => {
  // Editing a field clears its error.
  const el = /** @type {HTMLElement} */ (e.target)
  if (el.getAttribute('aria-invalid') !== 'true') return
  document.getElementById(`${el.id}-error`)?.remove()
  el.removeAttribute('aria-invalid')
  const orig = el.dataset.describedby
  if (orig) el.setAttribute('aria-describedby', orig)
  else el.removeAttribute('aria-describedby')
})

// token

const tokenInput = /** @type {HTMLInputElement} */ ($('token'))
tokenInput.value = state.token

function setToken(token) {
  state.token = token
  if (token) localStorage.setItem(TOKEN_KEY, token)
  else localStorage.removeItem(TOKEN_KEY)
  tokenInput.value = token
  hideBanner('auth')
  stream.restart()
  void loadList()
  if (state.detail) {
    const id = state.detail.jobId
    state.detail = null
    void showDetail(id)
  }
}

$('token-form').addEventListener('submit', (e) => {
  e.preventDefault()
  setToken(tokenInput.value.trim())
})
$('token-clear').addEventListener('click', () => setToken(''))

// filters and paging

$('filter-status').addEventListener('change', () => {
  state.order = []
  void loadList()
})
$('filter-type').addEventListener('change', () => {
  state.order = []
  void loadList()
})
$('refresh').addEventListener('click', () => void loadList())
$('more').addEventListener('click', () => void loadList({ append: true }))

setInterval(() => {
  if (document.visibilityState === 'visible' && stream.state === 'open') void loadList({ quiet: true })
}, REFRESH_MS)

// start

showType()
stream.start()
void loadList()
window.addEventListener('hashchange', route)
route()
