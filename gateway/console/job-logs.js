// The detail's Logs tab: what the job's process printed (stdout, stderr, `ctx.log`) in one attempt,
// picked by number. An attempt that has ended is read once; a running one is followed live with
// `?follow=1` (Server-Sent Events read with fetch, which can send the token as a header where an
// EventSource cannot; parsed by eventsource-parser), resumed after the last line on a reconnect, until
// its `end` event.

import { authHeaders, fetchWithToken, jobPath } from './api.js'
import { attemptEnded } from './attempts.js'
import { $, h } from './dom.js'
import { eventTime } from './format.js'
import { store } from './state.js'
import { ReconnectingFetch } from './stream.js'
import { createParser } from './vendor/eventsource-parser.js'

/**
 * One attempt's log followed live: `onLine(line)` per line (each seq once), `onEnd({attempt, dropped})`
 * when the attempt is over (then it stops), `onRefused(message)` when the gateway refuses it for good.
 */
export class LogFollow extends ReconnectingFetch {
  constructor({ jobId, attempt, onLine, onEnd, onRefused, onState }) {
    super({ onState })
    this.url = `${jobPath(jobId)}/logs?follow=1&attempt=${attempt}`
    this.handlers = { onLine, onEnd, onRefused }
    this.last = 0
  }

  /** Reads one response to its end; resolves with why it ended (nothing when it ended on purpose). */
  async read(request) {
    const headers = { accept: 'text/event-stream', ...authHeaders() }
    // Resumes after the last line shown: the gateway sends each later line once.
    if (this.last > 0) headers['last-event-id'] = String(this.last)
    let res
    try {
      res = await fetch(this.url, { headers, signal: request.signal })
    } catch (err) {
      return err
    }
    if (!res.ok || !res.body) {
      const body = await res.json().catch(() => null)
      const message = body?.error?.message ?? `HTTP ${res.status}`
      // 429 and 5xx (a backend down) pass; any other refusal (gone, no token) does not.
      if (res.status !== 429 && res.status < 500) {
        this.close()
        this.handlers.onRefused(message)
      }
      return new Error(message)
    }
    this.opened()
    let ended = false
    const parser = createParser({
      onEvent: (e) => {
        if (this.request !== request) return
        if (e.event === 'log') {
          const line = JSON.parse(e.data)
          if (line.seq <= this.last) return
          this.last = line.seq
          this.handlers.onLine(line)
        } else if (e.event === 'end') {
          ended = true
          this.close()
          this.handlers.onEnd(JSON.parse(e.data))
        }
      },
    })
    const reader = res.body.pipeThrough(new TextDecoderStream()).getReader()
    try {
      for (;;) {
        const { done, value } = await reader.read()
        if (done || ended) break
        parser.feed(value)
      }
    } catch (err) {
      return err
    }
    return ended ? undefined : new Error('the log stream ended before its attempt did')
  }
}

/**
 * Per detail: the attempt shown, the one the reader picked (null: the latest), the follow under way, how
 * many lines are shown, whether the tab shows, and a ticket that drops the answer of an older read.
 */
const logStateOf = (d) => {
  d.logs ??= { attempt: 0, choice: null, follow: null, count: 0, visible: false, request: 0 }
  return d.logs
}

const STREAM_LABEL = { stdout: 'out', stderr: 'err', log: 'log' }

/** A line: its clock time to the millisecond (as events and the CLI), its stream (a ctx.log line by its level), its text. */
function lineItem(line) {
  const label = line.stream === 'log' && line.level ? line.level : STREAM_LABEL[line.stream]
  return h(
    'li',
    {
      'data-stream': line.stream,
      'data-seq': String(line.seq),
      ...(line.level ? { 'data-level': line.level } : {}),
    },
    h('time', { datetime: line.at }, eventTime.format(new Date(line.at))),
    h('span', { class: 'stream', title: line.stream === 'log' ? 'ctx.log' : line.stream }, label),
    h('span', { class: 'text' }, line.text),
  )
}

/** Appends lines, like `tail -f`: staying at the newest unless the reader has scrolled up. */
function appendLines(logs, lines) {
  const list = $('d-log-lines')
  const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 24
  list.append(...lines.map(lineItem))
  logs.count += lines.length
  if (atBottom) list.scrollTop = list.scrollHeight
}

const setStatus = (text) => {
  $('d-log-status').textContent = text
}
const droppedText = (n) =>
  n > 0 ? ` ${n} more ${n === 1 ? 'line was' : 'lines were'} dropped past the cap.` : ''
const linesText = (n) => `${n} ${n === 1 ? 'line' : 'lines'}`

/** Stops following the detail's log (it closes, or shows another attempt or job). */
export function stopLogs(d) {
  const logs = d?.logs
  if (!logs) return
  logs.follow?.close()
  logs.follow = null
  logs.request++
}

/** Shows attempt `attempt` of `job`: read whole when it has ended, else followed until it does. */
function load(d, job, attempt) {
  const logs = logStateOf(d)
  stopLogs(d)
  logs.attempt = attempt
  logs.count = 0
  $('d-log-lines').replaceChildren()
  const current = () => store.get().detail === d && logs.attempt === attempt
  const a = job.attempts?.find((x) => x.attempt === attempt)
  if (attempt === 0) {
    setStatus('No attempt has started yet.')
    return
  }
  if (a && attemptEnded(job, a)) {
    setStatus('Loading…')
    const ticket = logs.request
    void fetchWithToken(`${jobPath(d.jobId)}/logs?attempt=${attempt}`)
      .then(async (res) => {
        const body = await res.json()
        if (!res.ok) throw new Error(body?.error?.message ?? `HTTP ${res.status}`)
        return body
      })
      .then(
        (body) => {
          if (!current() || logs.request !== ticket) return
          appendLines(logs, body.lines)
          setStatus(
            `Attempt ${attempt} ended: ${body.lines.length ? linesText(body.lines.length) : 'it printed nothing'}.${droppedText(body.dropped)}`,
          )
        },
        (err) => {
          if (current() && logs.request === ticket) setStatus(`Could not load the log: ${err.message}`)
        },
      )
    return
  }
  setStatus(`Following attempt ${attempt} live…`)
  const follow = new LogFollow({
    jobId: d.jobId,
    attempt,
    onLine: (line) => {
      if (!current()) return
      appendLines(logs, [line])
      setStatus(`Following attempt ${attempt} live: ${linesText(logs.count)}.`)
    },
    onEnd: ({ dropped }) => {
      if (!current()) return
      logs.follow = null
      setStatus(
        `Attempt ${attempt} ended: ${logs.count ? linesText(logs.count) : 'it printed nothing'}.${droppedText(dropped)}`,
      )
    },
    onRefused: (message) => {
      if (current()) setStatus(`Could not follow the log: ${message}`)
    },
    onState: (state, info) => {
      if (current() && state === 'waiting')
        setStatus(`Log stream lost; reconnecting in ${Math.ceil((info?.delayMs ?? 0) / 1000)} s…`)
    },
  })
  logs.follow = follow
  follow.start()
}

/**
 * Keeps the Logs tab in step with `job`: the picker offers its attempts; while the reader has not picked
 * one, the latest is shown (a new attempt replaces the one that ended). Loads only while the tab shows.
 */
export function renderLogs(d, job) {
  const logs = logStateOf(d)
  const picker = /** @type {HTMLSelectElement} */ ($('d-log-attempt'))
  const numbers = (job.attempts ?? []).map((a) => a.attempt)
  if (numbers.length === 0 && job.attempt > 0) numbers.push(job.attempt)
  const offered = [...picker.options].map((o) => Number(o.value))
  if (offered.join() !== numbers.join())
    picker.replaceChildren(...numbers.map((n) => h('option', { value: String(n) }, `Attempt ${n}`)))
  const latest = numbers.at(-1) ?? 0
  const wanted = logs.choice ?? latest
  picker.value = String(wanted)
  picker.disabled = numbers.length === 0
  if (logs.visible && wanted !== logs.attempt) load(d, job, wanted)
}

/** The Logs tab was shown (`visible`) or left. */
export function showLogs(d, job, visible) {
  const logs = logStateOf(d)
  logs.visible = visible
  if (visible) {
    // Shown again: read afresh (the lines kept coming while it was hidden).
    logs.attempt = -1
    renderLogs(d, job)
  } else stopLogs(d)
}

/** The reader picked attempt `n`. */
export function pickLogAttempt(d, job, n) {
  const logs = logStateOf(d)
  const latest = (job.attempts ?? []).at(-1)?.attempt ?? job.attempt
  logs.choice = n === latest ? null : n
  renderLogs(d, job)
}
