// How the console writes numbers, times, sizes and ids.

// The CLI writes them the same way: one home for both (stream.js).
export { percentText as pctText, shortJobId as shortId } from './stream.js'

const dateTime = new Intl.DateTimeFormat(undefined, { dateStyle: 'medium', timeStyle: 'medium' })
const timeOnly = new Intl.DateTimeFormat(undefined, { timeStyle: 'medium' })
/** An event's time, to the millisecond (events come many a second). */
export const eventTime = new Intl.DateTimeFormat(undefined, {
  hour: '2-digit',
  minute: '2-digit',
  second: '2-digit',
  fractionalSecondDigits: 3,
  hour12: false,
})

/** A time of today as a time, another day's with its date; `—` for none. */
export function fmtTime(iso) {
  if (!iso) return '—'
  const d = new Date(iso)
  return d.toDateString() === new Date().toDateString() ? timeOnly.format(d) : dateTime.format(d)
}

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

export function fmtDuration(ms) {
  if (ms < 1000) return `${ms} ms`
  const s = ms / 1000
  if (s < 60) return `${s.toFixed(1)} s`
  const m = Math.floor(s / 60)
  if (m < 60) return `${m} min ${Math.round(s % 60)} s`
  return `${Math.floor(m / 60)} h ${m % 60} min`
}
