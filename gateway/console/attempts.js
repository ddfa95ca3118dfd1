// The detail's attempts as a timeline: per attempt its host, start, duration, outcome, reason and message,
// and the last lines it printed on stderr (from the logs route), so why an attempt failed is on screen.

import { api, jobPath } from './api.js'
import { $, h } from './dom.js'
import { fmtDuration, timeEl } from './format.js'
import { store } from './state.js'
import { TERMINAL } from './stream.js'

/** How many of an attempt's last stderr lines are shown. */
export const STDERR_TAIL_LINES = 10

/** What a failed attempt's reason means, in words; other reasons are shown as they are. */
const REASONS = {
  timeout: 'timed out',
  crash: 'crashed',
  cancelled: 'cancelled',
  handler_error: 'the handler threw an error',
  invalid_params: 'invalid parameters',
  lost: 'lost (its queue entry was gone)',
  storage: 'could not store its output',
  interrupted: 'interrupted (host shut down)',
}

/** The reason of an attempt in words; a timeout says the limit it ran into. */
export function reasonText(reason, timeoutSec) {
  if (reason === 'timeout') return `Timed out after ${fmtDuration(timeoutSec * 1000)} (the job's limit)`
  return REASONS[reason] ?? reason
}

/** Whether attempt `a` of `job` has ended (its own end, a later attempt, or the job's). */
export const attemptEnded = (job, a) =>
  a.finishedAt !== null || a.outcome !== null || a.attempt < job.attempt || TERMINAL.has(job.status)

/** The stderr tail of an attempt that has ended, fetched once per detail (`d.stderrTails`). */
function loadTail(d, attempt, onLoaded) {
  if (d.stderrTails.has(attempt)) return
  d.stderrTails.set(attempt, { state: 'loading' })
  void api(`${jobPath(d.jobId)}/logs?attempt=${attempt}`).then(
    (body) => {
      const stderr = body.lines.filter((l) => l.stream === 'stderr')
      d.stderrTails.set(attempt, {
        state: 'loaded',
        lines: stderr.slice(-STDERR_TAIL_LINES),
        total: stderr.length,
      })
      onLoaded()
    },
    (err) => {
      d.stderrTails.set(attempt, { state: 'error', message: err.message })
      onLoaded()
    },
  )
}

function tailOf(d, job, a) {
  if (!attemptEnded(job, a)) return h('p', { class: 'hint' }, 'Running: its output is in the Logs tab, live.')
  const tail = d.stderrTails.get(a.attempt)
  if (!tail || tail.state === 'loading') return h('p', { class: 'hint' }, 'Reading its stderr…')
  if (tail.state === 'error') return h('p', { class: 'hint' }, `Could not read its log: ${tail.message}`)
  if (tail.lines.length === 0) return h('p', { class: 'hint' }, 'It printed nothing on stderr.')
  const shown = tail.lines.length < tail.total ? `last ${tail.lines.length} of ${tail.total}` : 'all'
  return h(
    'div',
    { class: 'stderr-tail' },
    h('p', { class: 'hint' }, `stderr (${shown} lines):`),
    h('pre', {}, tail.lines.map((l) => l.text).join('\n')),
  )
}

function entry(d, job, a) {
  const ended = attemptEnded(job, a)
  const outcome = a.outcome ?? (ended ? 'unknown' : 'running')
  const took =
    a.startedAt && a.finishedAt ? fmtDuration(Date.parse(a.finishedAt) - Date.parse(a.startedAt)) : null
  const facts = [
    ['Host', a.hostId ?? '—'],
    ['Started', timeEl(a.startedAt)],
    ['Duration', took ?? (ended ? '—' : 'running')],
    ['PID', a.pid === null ? '—' : String(a.pid)],
  ]
  return h(
    'li',
    { class: 'attempt-entry', 'data-attempt': String(a.attempt), 'data-outcome': outcome },
    h(
      'div',
      { class: 'attempt-head' },
      h('strong', {}, `Attempt ${a.attempt}`),
      h('span', { class: 'badge', 'data-status': outcome }, outcome),
      // A reason that only repeats the badge (cancelled, cancelled) is left out.
      a.reason && reasonText(a.reason, job.timeoutSec) !== outcome
        ? h('span', { class: 'reason', 'data-reason': a.reason }, reasonText(a.reason, job.timeoutSec))
        : null,
    ),
    h(
      'dl',
      { class: 'facts compact' },
      ...facts.map(([k, v]) => h('div', {}, h('dt', {}, k), h('dd', {}, v))),
    ),
    a.message ? h('p', { class: 'attempt-message' }, a.message) : null,
    tailOf(d, job, a),
  )
}

/** Shows the attempts of `job` in the detail `d` (its state: `stderrTails`, `attemptsKey`). */
export function renderAttempts(d, job) {
  const list = job.attempts ?? []
  for (const a of list) if (attemptEnded(job, a)) loadTail(d, a.attempt, () => rerender(d, job))
  const key = JSON.stringify([list, job.status, job.attempt, [...d.stderrTails.values()].map((t) => t.state)])
  if (key === d.attemptsKey) return
  d.attemptsKey = key
  $('d-attempts-section').hidden = list.length === 0
  $('d-attempts').replaceChildren(...list.map((a) => entry(d, job, a)))
}

function rerender(d, job) {
  // A tail that arrives after the detail moved on to another job is dropped.
  if (store.get().detail !== d) return
  d.attemptsKey = ''
  renderAttempts(d, job)
}
