/**
 * `GET /api/jobs/:jobId/logs`: what a job's process printed (stdout, stderr, `ctx.log`), per attempt
 * (`?attempt=N`, default the latest). `?follow=1` streams it as Server-Sent Events: the stored lines, then
 * the live ones from `logs:<jobId>` (deduplicated by seq), until the attempt ends.
 */
import type { HttpBindings } from '@hono/node-server'
import { type Context, Hono } from 'hono'
import { streamSSE } from 'hono/streaming'
import { isTerminal } from '../../schema/common.ts'
import type { Db } from '../../schema/db/connect.ts'
import {
  attemptEnded,
  droppedLogLines,
  type JobLogLine,
  type LogBatchMessage,
  logAttempts,
  readJobLogs,
} from '../../schema/db/logs.ts'
import type { JobRow } from '../../schema/db/tables.ts'
import type { ProgressEvent } from '../../schema/events.ts'
import { logsChannel } from '../../schema/keys.ts'
import { ApiError, BackendUnavailableError, onBackend } from '../errors.ts'
import { SUBSCRIBE_TIMEOUT_MS, type Subscription } from '../hub.ts'
import { queryValue } from '../query.ts'
import { connectionGone, holdStream, resumePoint, type SseDeps } from '../sse.ts'
import type { JobAccess } from './access.ts'

/** Lines waiting for a client that reads slower than they come; past it the client is dropped. */
const MAX_QUEUED_LINES = 10_000
const KEEP_ALIVE_MS = 15_000
/** A follower whose job's events stopped coming (a host that died) looks at the stored state this often. */
const RECHECK_MS = 5_000

export interface LogsDeps extends SseDeps {
  db: Db
  access: JobAccess
}

/** `?attempt=`: a positive integer, or a 400 naming it. */
function attemptQuery(c: Context): number | undefined {
  const raw = queryValue(c, 'attempt')
  if (raw === undefined) return undefined
  const n = Number(raw)
  if (/^\d+$/.test(raw) && Number.isSafeInteger(n) && n >= 1) return n
  const message = 'must be a positive integer'
  throw new ApiError(400, 'invalid_query', `invalid query: attempt ${message}`, [
    { path: 'attempt', message },
  ])
}

/** `?follow=1` (or `true`): the SSE variant of the route. */
export const isFollow = (value: string | undefined): boolean => value === '1' || value === 'true'

/** `follow` as the route reads it: 1/true or 0/false (or none); any other value is a 400 naming it. */
function followQuery(value: string | undefined): boolean {
  if (value === undefined || value === '0' || value === 'false') return false
  if (isFollow(value)) return true
  const message = 'must be 1 or true (follow), 0 or false'
  throw new ApiError(400, 'invalid_query', `invalid query: follow ${message}`, [{ path: 'follow', message }])
}

/** Whether `event` says attempt `attempt` is over (a later attempt, its own end, or the job's). */
const attemptOver = (event: ProgressEvent, attempt: number): boolean =>
  isTerminal(event.status) ||
  event.attempt > attempt ||
  (event.attempt === attempt && event.status !== 'running')

/**
 * A 404 for an attempt the job has not made and never will: past its maxAttempts, or past its last one
 * once it has finished. An attempt still to come (the next one of a running or retrying job, the first
 * of a queued one) has no lines yet, and `follow=1` waits for it.
 */
function checkAttempt(row: JobRow, attempt: number): void {
  // A job that ended before it ever started (cancelled while queued) made none.
  const made = isTerminal(row.status) ? row.attempt : Math.max(1, row.attempt)
  if (attempt <= made || (!isTerminal(row.status) && attempt <= row.maxAttempts)) return
  const n = row.attempt
  const could = isTerminal(row.status)
    ? `it ended (${row.status}) after ${n} attempt${n === 1 ? '' : 's'}`
    : `it may make ${row.maxAttempts}`
  const message = `no attempt ${attempt}: ${could}`
  throw new ApiError(404, 'not_found', `job ${JSON.stringify(row.id)} has ${message}`, [
    { path: 'attempt', message },
  ])
}

/** @example app.route('/', logRoutes({ ...deps, db: database.db, access })) */
export function logRoutes(deps: LogsDeps): Hono {
  const { db, access } = deps
  const app = new Hono()
  app.get('/api/jobs/:jobId/logs', async (c) => {
    const owner = c.get('owner')
    const row = await access.visibleJob(c.req.param('jobId'), owner)
    const asked = attemptQuery(c)
    // Unasked, the latest (or the first, still to come); its lines are none for a job that never started.
    const attempt = asked ?? Math.max(1, row.attempt)
    if (asked !== undefined) checkAttempt(row, asked)
    if (followQuery(queryValue(c, 'follow'))) return followLogs(c, row, attempt, owner, deps)
    const [lines, dropped, attempts] = await onBackend('Postgres', () =>
      Promise.all([
        readJobLogs(db, row.id, attempt),
        droppedLogLines(db, row.id, attempt),
        logAttempts(db, row.id),
      ]),
    )
    return c.json({ jobId: row.id, attempt, lines, dropped, attempts })
  })
  return app
}

/**
 * The SSE variant: `event: attempt` with `{attempt}`, `event: log` per line (id: its seq), then `event: end`
 * with `{attempt, dropped}`.
 */
async function followLogs(
  c: Context,
  row: JobRow,
  attempt: number,
  owner: string | null,
  deps: LogsDeps,
): Promise<Response> {
  const { hub, metrics, db } = deps
  const jobId = row.id
  const after = resumePoint(c) ?? 0
  const giveBack = holdStream(deps, owner)
  const gone = connectionGone(c)
  const live: JobLogLine[] = []
  let over = false
  let ended = false
  let wake: (() => void) | undefined
  let stop: () => void = () => {}
  // Resolves on end: a write the client does not take (it stopped reading) must not hold the stream.
  const stopped = new Promise<void>((resolve) => {
    stop = resolve
  })
  const end = () => {
    ended = true
    stop()
    wake?.()
  }
  gone.signal.addEventListener('abort', end, { once: true })

  // Subscribed (to the lines and to the job's events) before the response starts: Redis down is a 503.
  const onBatch = (raw: string) => {
    let batch: LogBatchMessage
    try {
      batch = JSON.parse(raw) as LogBatchMessage
    } catch {
      return
    }
    if (batch.attempt !== attempt || !Array.isArray(batch.lines)) return
    if (live.length + batch.lines.length > MAX_QUEUED_LINES) {
      metrics.dropped.inc({ transport: 'sse', reason: 'slow_client' })
      end()
    } else live.push(...batch.lines)
    wake?.()
  }
  let events: Subscription | undefined
  let unlisten: (() => void) | undefined
  let closed = false
  const close = () => {
    closed = true
    events?.close()
    unlisten?.()
    gone.dispose()
    giveBack()
  }
  try {
    const signal = AbortSignal.any([gone.signal, AbortSignal.timeout(SUBSCRIBE_TIMEOUT_MS)])
    const listening = hub.listen(logsChannel(jobId), onBatch)
    // Given up on (timeout, client gone): a late confirmation must still stop listening.
    listening.then((stop) => (closed ? stop() : undefined)).catch(() => {})
    unlisten = await Promise.race([
      listening,
      new Promise<never>((_, reject) =>
        signal.addEventListener('abort', () => reject(signal.reason), { once: true }),
      ),
    ])
    events = await hub.subscribe(
      jobId,
      undefined,
      (event) => {
        if (!attemptOver(event, attempt)) return
        over = true
        wake?.()
      },
      { signal, onEnd: end },
    )
  } catch {
    close()
    if (gone.signal.aborted) return new Response(null, { status: 499 })
    throw new BackendUnavailableError('Redis', 'no live log lines now; retry shortly')
  }

  const outgoing = (c.env as Partial<HttpBindings> | undefined)?.outgoing
  return streamSSE(c, async (stream) => {
    stream.onAbort(end)
    let last = after
    let writing = false
    const write = async (event: string, data: string, id?: number) => {
      writing = true
      try {
        const written = stream.writeSSE({ event, data, ...(id === undefined ? {} : { id: String(id) }) })
        await Promise.race([written, stopped])
        if (ended) throw new Error('the stream ended')
        writing = false
      } catch (err) {
        // Left `writing` when cut off mid-write: the connection is then destroyed, not closed cleanly.
        if (!ended) writing = false
        throw err
      }
    }
    const send = async (lines: JobLogLine[], fill = true): Promise<void> => {
      for (const line of lines) {
        if (ended) return
        if (line.seq <= last) continue
        // A batch this stream has not seen (its publish was lost): the stored lines fill the gap first.
        if (fill && line.seq > last + 1) await send(await readJobLogs(db, jobId, attempt, last), false)
        if (ended || line.seq <= last) continue
        await write('log', JSON.stringify(line), line.seq)
        last = line.seq
      }
    }
    const keepAlive = setInterval(() => {
      if (!writing) void stream.write(': keep-alive\n\n').catch(end)
    }, KEEP_ALIVE_MS)
    // A host that died leaves no end event: the stored attempt (closed by the reconciler) says so.
    const recheck = setInterval(() => {
      void attemptEnded(db, jobId, attempt)
        .then((done) => {
          if (done) {
            over = true
            wake?.()
          }
        })
        .catch(() => {})
    }, RECHECK_MS)
    try {
      // Which attempt this is (a reconnect asks for it by number, whatever the latest is by then).
      await write('attempt', JSON.stringify({ attempt }))
      await send(await readJobLogs(db, jobId, attempt, last))
      while (!ended) {
        const batch = live.splice(0)
        if (batch.length > 0) {
          await send(batch)
          continue
        }
        if (over) {
          // Every line of the attempt is stored before its final event: read what is left, then end.
          await send(await readJobLogs(db, jobId, attempt, last))
          if (!ended)
            await write(
              'end',
              JSON.stringify({ attempt, dropped: await droppedLogLines(db, jobId, attempt) }),
            )
          break
        }
        await new Promise<void>((resolve) => {
          wake = resolve
        })
        wake = undefined
      }
    } catch {
      // Postgres or the connection failed mid-stream: the client reconnects after the last id it saw.
    } finally {
      clearInterval(keepAlive)
      clearInterval(recheck)
      close()
      if (gone.signal.aborted || writing) {
        if (outgoing) outgoing.destroy()
        else stream.abort()
      }
    }
  })
}
