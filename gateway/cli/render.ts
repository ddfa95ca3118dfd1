import type { Artifact, JobAttempt, JobStatusBody, JobSummary } from '../../schema/api.ts'
import type { ProgressEvent } from '../../schema/events.ts'
import { attemptText, percentText } from '../console/stream.js'
import { alignRows, table } from './table.ts'

/** The widest percentage (`100%`): the column it is padded to. */
const PERCENT_WIDTH = 4

/** A timestamp (24 characters), `  #` and a seq of up to 6 digits: the status column starts after it. */
const EVENT_HEAD_WIDTH = 24 + 3 + 6

/** One line per event, for logs and pipes: `2025-11-03T12:00:00.000Z  #17 running    45%  Epoch 3/5`. */
export function eventLine(e: ProgressEvent): string {
  const attempt = e.attempt > 1 ? `  (attempt ${e.attempt})` : ''
  const message = e.message && e.message !== e.status ? `  ${e.message}` : ''
  return `${`${e.timestamp}  #${e.seq}`.padEnd(EVENT_HEAD_WIDTH)} ${e.status.padEnd(9)} ${percentText(e.progress, e.status).padStart(PERCENT_WIDTH)}${message}${attempt}`
}

const BAR_WIDTH = 24

/** The progress bar of a terminal, one line that fits `columns`: `[█████░░░░]  45%  running  Epoch 3/5`. */
export function progressBar(e: ProgressEvent, columns: number): string {
  // Rounded down like the percentage beside it: full only when the job has completed.
  const part = Math.floor((Math.max(0, Math.min(100, e.progress)) / 100) * BAR_WIDTH)
  const filled = e.status === 'completed' ? BAR_WIDTH : Math.min(BAR_WIDTH - 1, part)
  const bar = `[${'█'.repeat(filled)}${'░'.repeat(BAR_WIDTH - filled)}]`
  const attempt = e.attempt > 1 ? ` (attempt ${e.attempt})` : ''
  const head = `${bar} ${percentText(e.progress, e.status).padStart(PERCENT_WIDTH)}  ${e.status}${attempt}`
  const message = e.message && e.message !== e.status ? `  ${e.message.replace(/\s+/g, ' ')}` : ''
  return truncate(`${head}${message}`, Math.max(20, columns - 1))
}

export function truncate(text: string, width: number): string {
  const chars = [...text]
  return chars.length <= width ? text : `${chars.slice(0, width - 1).join('')}…`
}

export function bytes(n: number): string {
  if (n < 1024) return `${n} B`
  const units = ['KiB', 'MiB', 'GiB', 'TiB']
  let v = n / 1024
  let i = 0
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024
    i++
  }
  return `${v.toFixed(v < 10 ? 1 : 0)} ${units[i]}`
}

/** `3m 12s`, `1h 4m`, `850ms`. */
export function duration(ms: number): string {
  if (ms < 1000) return `${Math.max(0, Math.round(ms))}ms`
  const s = Math.round(ms / 1000)
  if (s < 60) return `${s}s`
  const m = Math.floor(s / 60)
  if (m < 60) return `${m}m ${s % 60}s`
  const h = Math.floor(m / 60)
  if (h < 48) return `${h}h ${m % 60}m`
  return `${Math.floor(h / 24)}d ${h % 24}h`
}

const when = (iso: string | null | undefined, now: number): string | undefined => {
  if (!iso) return undefined
  const t = Date.parse(iso)
  if (Number.isNaN(t)) return iso
  const delta = now - t
  return `${iso} (${delta >= 0 ? `${duration(delta)} ago` : `in ${duration(-delta)}`})`
}

const compactJson = (value: unknown, max = 300): string => truncate(JSON.stringify(value) ?? '', max)

/**
 * The attempts of `gpu-jobs status`, one line each: `#1  host-a  12s  failed  crash  exited with code 3`
 * (a running attempt: its duration so far).
 */
export function attemptLines(attempts: JobAttempt[], now = Date.now()): string[] {
  const rows = attempts.map((a) => {
    const start = a.startedAt ? Date.parse(a.startedAt) : Number.NaN
    const end = a.finishedAt ? Date.parse(a.finishedAt) : now
    return [
      `#${a.attempt}`,
      a.hostId ?? '-',
      Number.isNaN(start) ? '-' : duration(end - start),
      a.outcome ?? (a.finishedAt ? '-' : 'running'),
      a.reason ?? '',
      (a.message ?? '').replace(/\s+/g, ' '),
    ]
  })
  return alignRows(rows, { right: [2], indent: '  ' })
}

/** `artifacts (2)`, then one line each: path, size, checksum, download URL (`gpu-jobs status`, `follow`). */
export function artifactLines(artifacts: Artifact[], baseUrl: URL): string[] {
  const rows = artifacts.map((a) => [
    a.path,
    bytes(a.size),
    `sha256:${a.sha256.slice(0, 12)}`,
    new URL(a.url.replace(/^\//, ''), baseUrl).href,
  ])
  return [`artifacts (${artifacts.length})`, ...alignRows(rows, { right: [1], indent: '  ' })]
}

/**
 * How a followed job ended, after its last event: `completed in 12s`, `failed after 3s (attempt 3 of 3):
 * crash (retryable): exited with code 3` (the error unless the last event said it), then its artifacts.
 */
export function outcomeLines(job: JobStatusBody, final: ProgressEvent, baseUrl: URL): string[] {
  // The row may trail the final event by a moment: then the event's time is the end.
  const end = Date.parse(job.finishedAt ?? final.timestamp)
  const ran = job.startedAt
    ? `${final.status === 'completed' ? 'in' : 'after'} ${duration(end - Date.parse(job.startedAt))}`
    : 'before it started'
  // As the status says it: "(2 attempts)" for a completed job, "(attempt 3 of 3)" for a failure after the
  // last one allowed, "(attempt 1)" for one that no retry would follow.
  const said = attemptText({ ...job, status: final.status })
  const attempts =
    job.attempt > 1 || final.status === 'failed'
      ? ` (${final.status === 'completed' ? said : `attempt ${said}`})`
      : ''
  const error =
    job.error && !final.message.includes(job.error.message)
      ? `: ${job.error.reason} (${job.error.code}): ${job.error.message}`
      : ''
  return [
    `${final.status} ${ran}${attempts}${error}`,
    ...(job.artifacts.length > 0 ? artifactLines(job.artifacts, baseUrl) : []),
  ]
}

/** The human-readable summary of `gpu-jobs status`. */
export function statusSummary(job: JobStatusBody, baseUrl: URL, now = Date.now()): string {
  const rows: [string, string | undefined][] = [
    ['job', job.jobId],
    ['type', job.type],
    ['status', `${job.status}  ${percentText(job.progress, job.status)}`],
    ['message', job.message || undefined],
    ['attempt', attemptText(job)],
    ['created', when(job.createdAt, now)],
    ['started', when(job.startedAt, now)],
    ['finished', when(job.finishedAt, now)],
    ['next try', job.status === 'retrying' ? when(job.nextAttemptAt, now) : undefined],
  ]
  if (job.startedAt) {
    const end = job.finishedAt ? Date.parse(job.finishedAt) : now
    const elapsed = end - Date.parse(job.startedAt)
    // Its attempts' own time, without the backoffs between them (or the wait of a job put back).
    const ran = job.attempts.reduce(
      (ms, a) =>
        a.startedAt === null
          ? ms
          : ms + Math.max(0, (a.finishedAt ? Date.parse(a.finishedAt) : now) - Date.parse(a.startedAt)),
      0,
    )
    const waited = job.attempts.length > 0 && elapsed - ran >= 1000
    rows.push([
      'ran for',
      waited ? `${duration(ran)} (${duration(elapsed)} since it first started)` : duration(elapsed),
    ])
  }
  rows.push(['params', compactJson(job.params)])
  if (job.error) rows.push(['error', `${job.error.reason} (${job.error.code}): ${job.error.message}`])
  if (job.result !== null && job.result !== undefined) rows.push(['result', compactJson(job.result)])
  const lines = rows
    .filter((r): r is [string, string] => r[1] !== undefined)
    .map(([k, v]) => `${k.padEnd(10)}${v}`)
  if (job.attempts.length > 0)
    lines.push(`attempts (${job.attempts.length})`, ...attemptLines(job.attempts, now))
  if (job.artifacts.length > 0) lines.push(...artifactLines(job.artifacts, baseUrl))
  return lines.join('\n')
}

/** The table of `gpu-jobs list`. */
export function jobTable(jobs: JobSummary[], now = Date.now()): string {
  const rows = jobs.map((j) => [
    j.jobId,
    j.type,
    j.attempt > 1 ? `${j.status} (${j.attempt}/${j.maxAttempts})` : j.status,
    percentText(j.progress, j.status),
    `${duration(now - Date.parse(j.createdAt))} ago`,
    truncate((j.error ? `${j.error.reason}: ${j.error.message}` : j.message).replace(/\s+/g, ' '), 60),
  ])
  return table(['JOB ID', 'TYPE', 'STATUS', 'PROGRESS', 'CREATED', 'MESSAGE'], rows, ['PROGRESS', 'CREATED'])
}
