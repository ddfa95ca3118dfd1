// How the console writes numbers, times, sizes and ids.
//
// Times: one format everywhere. A moment is shown relative to now ("3 minutes ago", "in 20 seconds"),
// with the absolute local date and time (`fmtTime`) as its tooltip and in its `datetime`; views make
// such an element with `timeEl(iso)`, or turn one of theirs into it with `setTime(el, iso)`, and every
// one of them is kept current as the page stays open. Spans of time (a run, a wait) are `fmtDuration`.
// The one exception is a record of lines (a job's events, its logs): there each line's clock time to the
// millisecond (`eventTime`), as in the CLI, since what matters is their order and spacing.

// The CLI writes them the same way: one home for both (stream.js).
export { percentText as pctText, shortJobId as shortId } from './stream.js'

const absolute = new Intl.DateTimeFormat(undefined, { dateStyle: 'medium', timeStyle: 'medium' })
const relative = new Intl.RelativeTimeFormat(undefined, { numeric: 'auto' })
/** An event's time, to the millisecond (events come many a second). */
export const eventTime = new Intl.DateTimeFormat(undefined, {
  hour: '2-digit',
  minute: '2-digit',
  second: '2-digit',
  fractionalSecondDigits: 3,
  hour12: false,
})

/** A moment as a local date and time (always both, so no two places differ); `—` for none. */
export function fmtTime(iso) {
  if (!iso) return '—'
  return absolute.format(new Date(iso))
}

/** The largest unit that fits, in seconds; a month and a year as their usual lengths. */
const UNITS = /** @type {const} */ ([
  ['year', 365 * 86_400],
  ['month', 30 * 86_400],
  ['week', 7 * 86_400],
  ['day', 86_400],
  ['hour', 3_600],
  ['minute', 60],
  ['second', 1],
])
/** Closer than this to now is "now": a second of difference between clocks is not news. */
const NOW_SEC = 1

/**
 * A moment relative to `now`: "now", "45 seconds ago", "3 minutes ago", "yesterday", "in 20 seconds";
 * `—` for none. Whole units, rounded toward now.
 *
 * @example fmtAgo('2026-01-01T00:00:00Z', Date.parse('2026-01-01T00:03:30Z')) // "3 minutes ago"
 */
export function fmtAgo(iso, now = Date.now()) {
  if (!iso) return '—'
  const sec = (Date.parse(iso) - now) / 1000
  if (Math.abs(sec) < NOW_SEC) return relative.format(0, 'second')
  for (const [unit, size] of UNITS)
    if (Math.abs(sec) >= size) return relative.format(Math.trunc(sec / size), unit)
  return relative.format(0, 'second')
}

/** Shows the moment `iso` in `el` (relative, absolute in its tooltip), kept current from now on. */
export function setTime(el, iso) {
  el.textContent = fmtAgo(iso)
  el.title = iso ? fmtTime(iso) : ''
  if (iso) {
    el.dataset.time = iso
    if (el instanceof HTMLTimeElement) el.dateTime = iso
  } else delete el.dataset.time
  return el
}

/** A `<time>` element of the moment `iso`, kept current (see `setTime`). */
export const timeEl = (iso) => setTime(document.createElement('time'), iso)

// Relative times grow stale: every element showing one is rewritten while the page is visible. Only in a
// page: tests import this module in Node, where a timer would throw on `document` and keep the process up.
const TICK_MS = 10_000
if (typeof document !== 'undefined')
  setInterval(() => {
    if (document.visibilityState !== 'visible') return
    const now = Date.now()
    for (const el of document.querySelectorAll('[data-time]'))
      el.textContent = fmtAgo(/** @type {HTMLElement} */ (el).dataset.time, now)
  }, TICK_MS)

export function fmtBytes(n) {
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

/** A span of time: "850 ms", "4.2 s", "3 min 5 s", "2 h 10 min". */
export function fmtDuration(ms) {
  if (ms < 1000) return `${Math.round(ms)} ms`
  const s = ms / 1000
  if (s < 60) return `${s.toFixed(1)} s`
  const m = Math.floor(s / 60)
  if (m < 60) return `${m} min ${Math.floor(s % 60)} s`
  return `${Math.floor(m / 60)} h ${m % 60} min`
}
