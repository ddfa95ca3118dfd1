import type { Redis } from 'ioredis'
import type { ProgressEvent, UnsequencedEvent } from './events.ts'
import { eventLogKey, progressChannel, seqKey } from './keys.ts'

/** Events kept per job in the replay stream; older ones are trimmed (the terminal state is in Postgres). */
export const EVENT_LOG_MAX = 10_000
/** How long a finished job's replay stream is kept. */
export const EVENT_LOG_TTL_SEC = 7 * 24 * 3600

// One script so that seq order, stream order and publish order are the same for every event of a job,
// whichever process emits it. The event JSON is built around the seq so its field order is the contract's.
const EMIT_SCRIPT = `
local seq = redis.call('INCR', KEYS[1])
local json = ARGV[1] .. ',"seq":' .. seq .. ARGV[2]
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], tostring(seq) .. '-1', 'e', json)
redis.call('PUBLISH', ARGV[3], json)
if ARGV[5] ~= '0' then
  redis.call('EXPIRE', KEYS[1], ARGV[5])
  redis.call('EXPIRE', KEYS[2], ARGV[5])
end
return seq
`

// The same, only for a job that has no event yet: a producer's `queued` event, written after the job was
// added (so a refused add leaves nothing), is skipped when a host was quicker (its seq must come first).
const EMIT_FIRST_SCRIPT = `
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
${EMIT_SCRIPT}`

/** The arguments of EMIT_SCRIPT for `event`: its keys, the JSON around its seq, where it is published. */
function emitArgs(event: UnsequencedEvent, terminal: boolean): [number, ...string[]] {
  const head = JSON.stringify({
    jobId: event.jobId,
    status: event.status,
    progress: event.progress,
    message: event.message,
    timestamp: event.timestamp,
  }).slice(0, -1)
  // `metrics` is optional and additive: after the fields every event has.
  const rest = {
    type: event.type,
    attempt: event.attempt,
    ...(event.metrics ? { metrics: event.metrics } : {}),
  }
  const tail = `,${JSON.stringify(rest).slice(1)}`
  return [
    2,
    seqKey(event.jobId),
    eventLogKey(event.jobId),
    head,
    tail,
    progressChannel(event.jobId),
    String(EVENT_LOG_MAX),
    terminal ? String(EVENT_LOG_TTL_SEC) : '0',
  ]
}

/** Appends an event to the job's replay log and publishes it; returns the event with its seq. */
export async function emitEvent(
  redis: Redis,
  event: UnsequencedEvent,
  { terminal = false }: { terminal?: boolean } = {},
): Promise<ProgressEvent> {
  const seq = (await redis.eval(EMIT_SCRIPT, ...emitArgs(event, terminal))) as number
  return { ...event, seq }
}

/**
 * `emitEvent` for the first event of each of several jobs, in one round trip (a pipeline of one script
 * call per job; each job's seq, log and publish stay atomic): null (nothing written) for a job that has
 * an event already. In the events' order; throws the first error any call met.
 */
export async function emitFirstEvents(
  redis: Redis,
  events: UnsequencedEvent[],
): Promise<(ProgressEvent | null)[]> {
  if (events.length === 0) return []
  const pipeline = redis.pipeline()
  for (const event of events) pipeline.eval(EMIT_FIRST_SCRIPT, ...emitArgs(event, false))
  const replies = (await pipeline.exec()) ?? []
  return events.map((event, i) => {
    const [err, seq] = replies[i] ?? [new Error('no reply to an emitted event')]
    if (err) throw err
    return seq === 0 ? null : { ...event, seq: seq as number }
  })
}

/** Events of a job with `seq > after`, oldest first (stream ids are `<seq>-1`). */
export async function readEvents(
  redis: Redis,
  jobId: string,
  after = 0,
  limit = 1000,
): Promise<ProgressEvent[]> {
  const rows = await redis.xrange(eventLogKey(jobId), `(${after}-1`, '+', 'COUNT', limit)
  return rows.map(([, fields]) => JSON.parse(fields[1] ?? '{}') as ProgressEvent)
}

/** The newest event of a job, or null when its log is empty or expired. */
export async function lastEvent(redis: Redis, jobId: string): Promise<ProgressEvent | null> {
  const rows = await redis.xrevrange(eventLogKey(jobId), '+', '-', 'COUNT', 1)
  const fields = rows[0]?.[1]
  return fields?.[1] ? (JSON.parse(fields[1]) as ProgressEvent) : null
}
