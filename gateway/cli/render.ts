import type { JobAttempt, JobStatusBody, JobSummary } from '../../schema/api.ts'
import type { ProgressEvent } from '../../schema/events.ts'

export const percent = (p: number): string => `${Number(p.toFixed(1))}%`

/** One line per event, for logs and pipes: `2025-11-03T12:00:00.000Z  #17 running    45.3%  Epoch 3/5`. */
export function eventLine(e: ProgressEvent): string {
  const attempt = e.attempt > 1 ? `  (attempt ${e.attempt})` : ''
  const message = e.message && e.message !== e.status ? `  ${e.message}` : ''
  return `${e.timestamp}  #${e.seq} ${e.status.padEnd(9)} ${percent(e.progress).padStart(6)}${message}${attempt}`
}

const BAR_WIDTH = 24

/** The progress bar of a terminal, one line that fits `columns`: `[█████░░░░]  45.3%  running  Epoch 3/5`. */
export function progressBar(e: ProgressEvent, columns: number): string {
  const filled = Math.round((Math.max(0, Math.min(100, e.progress)) / 100) * BAR_WIDTH)
  const bar = `[${'█'.repeat(filled)}${'░'.repeat(BAR_WIDTH - filled)}]`
  const attempt = e.attempt > 1 ? ` (attempt ${e.attempt})` : ''
  const head = `${bar} ${percent(e.progress).padStart(6)}  ${e.status}${attempt}`
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

/** Rows of cells as lines, each column as wide as its widest cell (the last one left as is). */
export function alignColumns(rows: string[][], indent = ''): string[] {
  const widths: number[] = []
  for (const r of rows) for (const [i, cell] of r.entries()) widths[i] = Math.max(widths[i] ?? 0, cell.length)
  return rows.map(
    (r) =>
      indent +
      r
        .map((cell, i) => (i === r.length - 1 ? cell : cell.padEnd(widths[i] ?? 0)))
        .join('  ')
        .trimEnd(),
  )
}

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
  return alignColumns(rows, '  ')
}

/** The human-readable summary of `gpu-jobs status`. */
export function statusSummary(job: JobStatusBody, baseUrl: URL, now = Date.now()): string {
  const rows: [string, string | undefined][] = [
    ['job', job.jobId],
    ['type', job.type],
    ['status', `${job.status}  ${percent(job.progress)}`],
    ['message', job.message || undefined],
    ['attempt', `${job.attempt} of ${job.maxAttempts}`],
    ['created', when(job.createdAt, now)],
    ['started', when(job.startedAt, now)],
    ['finished', when(job.finishedAt, now)],
    ['next try', job.status === 'retrying' ? when(job.nextAttemptAt, now) : undefined],
  ]
  if (job.startedAt) {
    const end = job.finishedAt ? Date.parse(job.finishedAt) : now
    rows.push(['ran for', duration(end - Date.parse(job.startedAt))])
  }
  rows.push(['params', compactJson(job.params)])
  if (job.error) rows.push(['error', `${job.error.reason} (${job.error.code}): ${job.error.message}`])
  if (job.result !== null && job.result !== undefined) rows.push(['result', compactJson(job.result)])
  const lines = rows
    .filter((r): r is [string, string] => r[1] !== undefined)
    .map(([k, v]) => `${k.padEnd(10)}${v}`)
  if (job.attempts.length > 0)
    lines.push(`attempts (${job.attempts.length})`, ...attemptLines(job.attempts, now))
  if (job.artifacts.length > 0) {
    lines.push(`artifacts (${job.artifacts.length})`)
    const width = Math.max(...job.artifacts.map((a) => a.path.length))
    for (const a of job.artifacts)
      lines.push(
        `  ${a.path.padEnd(width)}  ${bytes(a.size).padStart(9)}  sha256:${a.sha256.slice(0, 12)}  ${new URL(a.url.replace(/^\//, ''), baseUrl).href}`,
      )
  }
  return lines.join('\n')
}

/** The table of `gpu-jobs list`. */
export function jobTable(jobs: JobSummary[], now = Date.now()): string {
  const header = ['JOB ID', 'TYPE', 'STATUS', 'PROGRESS', 'CREATED', 'MESSAGE']
  const rows = jobs.map((j) => [
    j.jobId,
    j.type,
    j.attempt > 1 ? `${j.status} (${j.attempt}/${j.maxAttempts})` : j.status,
    percent(j.progress),
    `${duration(now - Date.parse(j.createdAt))} ago`,
    truncate((j.error ? `${j.error.reason}: ${j.error.message}` : j.message).replace(/\s+/g, ' '), 60),
  ])
  return alignColumns([header, ...rows]).join('\n')
}
