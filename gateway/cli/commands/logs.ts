import { setTimeout as sleep } from 'node:timers/promises'
import { createParser } from 'eventsource-parser'
import type { JobLogsBody } from '../../../schema/api.ts'
import { backoffDelay } from '../../../schema/backoff.ts'
import type { JobLogLine } from '../../../schema/db/logs.ts'
import { ConnectionError, describeNetworkError, errorFromResponse, type GatewayClient } from '../client.ts'
import { clientFor, EXIT, help, line, oneId, parse, type RunIO, withJobId } from '../command.ts'
import { DEFAULT_RECONNECT } from '../follow.ts'
import { UsageError } from '../params.ts'

/** `HH:MM:SS.mmm stream text` (UTC, as the API's timestamps). */
export const formatLogLine = (l: JobLogLine): string =>
  `${l.at.slice(11, 23)} ${l.stream.padEnd(6)} ${l.level && l.level !== 'info' ? `[${l.level}] ` : ''}${l.text}`

const logsPath = (jobId: string, query: Record<string, string | undefined>) => {
  const qs = new URLSearchParams()
  for (const [k, v] of Object.entries(query)) if (v !== undefined) qs.set(k, v)
  const q = qs.toString()
  return `api/jobs/${encodeURIComponent(jobId)}/logs${q ? `?${q}` : ''}`
}

/** `gpu-jobs logs <id> [--attempt N] [--follow] [--json]` (`<id>` may be its start). */
export async function logs(args: string[], io: RunIO): Promise<number> {
  const { values, positionals } = parse(args, {
    attempt: { type: 'string' },
    follow: { type: 'boolean', short: 'f' },
    json: { type: 'boolean' },
  })
  if (values.help) return help(io, 'logs')
  const typed = oneId(positionals, 'logs')
  if (values.attempt !== undefined && !/^[1-9]\d{0,8}$/.test(values.attempt))
    throw new UsageError(`--attempt must be a whole number from 1 to 999999999, got "${values.attempt}"`)
  const client = clientFor(io, values.url)
  const print = (l: JobLogLine) => line(io.stdout, values.json ? JSON.stringify(l) : formatLogLine(l))
  // A 404 of the first request (before any line is printed) is what lets withJobId try the id's start.
  if (values.follow)
    return withJobId(client, typed, (jobId) => followLogs(io, client, jobId, values.attempt, print))
  const { body } = await withJobId(client, typed, (jobId) =>
    client.request<JobLogsBody>('GET', logsPath(jobId, { attempt: values.attempt })),
  )
  if (values.json) line(io.stdout, JSON.stringify(body, null, 2))
  else {
    for (const l of body.lines) print(l)
    const others = body.attempts.filter((a) => a !== body.attempt)
    const notes = [
      `attempt ${body.attempt}: ${body.lines.length} line${body.lines.length === 1 ? '' : 's'}${body.attempts.length === 0 ? ' (the job has made no attempt)' : ''}`,
      ...(body.dropped > 0 ? [`${body.dropped} more dropped (over the cap)`] : []),
      ...(others.length > 0 ? [`other attempts: ${others.join(', ')} (--attempt N)`] : []),
    ]
    line(io.stderr, notes.join('; '))
  }
  return EXIT.ok
}

/**
 * Streams the attempt's lines until it ends (`event: end`), reconnecting after a drop from the last line
 * seen (Last-Event-ID), so no line is shown twice; Ctrl-C stops following, not the job.
 */
async function followLogs(
  io: RunIO,
  client: GatewayClient,
  jobId: string,
  pinned: string | undefined,
  print: (l: JobLogLine) => void,
): Promise<number> {
  const policy = { ...DEFAULT_RECONNECT, ...io.reconnect }
  // The latest attempt when none is given: pinned by the stream's first event, so a reconnect stays on it.
  let attempt = pinned
  let last = 0
  let failures = 0
  let lastProgress = Date.now()
  const ac = new AbortController()
  const signal = io.signal ? AbortSignal.any([io.signal, ac.signal]) : ac.signal
  for (;;) {
    let end: { attempt: number; dropped: number } | undefined
    let cause: unknown
    try {
      const res = await fetch(client.url(logsPath(jobId, { attempt, follow: '1' })), {
        headers: client.headers({
          accept: 'text/event-stream',
          ...(last > 0 ? { 'last-event-id': String(last) } : {}),
        }),
        signal,
      })
      if (!res.ok || !res.body) {
        const error = errorFromResponse(res.status, res.statusText, await res.text())
        if (res.status < 500 && res.status !== 429) throw error
        cause = error
      } else {
        const parser = createParser({
          onEvent: ({ event, data }) => {
            if (event === 'attempt') attempt ??= String((JSON.parse(data) as { attempt: number }).attempt)
            if (event === 'end') end = JSON.parse(data) as { attempt: number; dropped: number }
            if (event !== 'log') return
            const l = JSON.parse(data) as JobLogLine
            if (l.seq <= last) return
            last = l.seq
            lastProgress = Date.now()
            failures = 0
            print(l)
          },
        })
        const reader = res.body.pipeThrough(new TextDecoderStream()).getReader()
        for (;;) {
          const { value, done } = await reader.read()
          if (done) break
          parser.feed(value)
        }
        if (end) {
          const dropped = end.dropped > 0 ? `; ${end.dropped} lines dropped (over the cap)` : ''
          line(io.stderr, `attempt ${end.attempt} ended${dropped}`)
          return EXIT.ok
        }
        cause = new Error('the log stream ended')
      }
    } catch (err) {
      if (io.signal?.aborted) {
        line(io.stderr, `stopped following; the job goes on. Resume: gpu-jobs logs ${jobId} --follow`)
        return EXIT.interrupted
      }
      if (!(err instanceof TypeError) && !(err instanceof Error && err.name === 'AbortError')) throw err
      cause = err
    }
    if (Date.now() - lastProgress > policy.giveUpMs)
      throw new ConnectionError(client.baseUrl.href.replace(/\/$/, ''), describeNetworkError(cause))
    const delay = backoffDelay(++failures, {
      baseMs: policy.baseDelayMs,
      maxMs: policy.maxDelayMs,
      jitter: 0.5,
    })
    line(
      io.stderr,
      `log stream lost (${describeNetworkError(cause)}); reconnecting in ${(delay / 1000).toFixed(1)}s`,
    )
    await sleep(delay, undefined, { signal }).catch(() => {})
    if (io.signal?.aborted) {
      line(io.stderr, `stopped following; the job goes on. Resume: gpu-jobs logs ${jobId} --follow`)
      return EXIT.interrupted
    }
  }
}
