/**
 * Child process of bench/fanout.ts: the load generator. For each job it emits `rate` events a second,
 * spread evenly, for `durationMs` (one segment; the benchmark alternates modes), with the emit time (cross-process clock, ms) as the event's message.
 * Mode `ours` calls emitEvent() from schema/progress-log.ts, exactly what the GPU host's Reporter does for
 * each ctx.progress() (one Redis connection, events of a job chained one after another); mode `raw`
 * PUBLISHes the same JSON on a plain channel with a local seq (no replay log, no script).
 */
import { Redis } from 'ioredis'
import { emitEvent } from '../schema/progress-log.ts'
import { clock, rounded, summarize } from './lib.ts'

interface RunMsg {
  op: 'run'
  id: number
  mode: 'ours' | 'raw'
  jobIds: string[]
  ratePerJob: number
  durationMs: number
  rawPrefix: string
}

/** The raw mode's seq of each job, kept from one run (segment) to the next. */
const rawSeqs = new Map<string, number>()
const redis = new Redis(process.env.BENCH_REDIS_URL ?? 'redis://127.0.0.1:6379')

async function run(msg: RunMsg): Promise<void> {
  const { jobIds, mode } = msg
  const period = 1000 / msg.ratePerJob
  const start = clock() + 20
  const due = jobIds.map((_, j) => start + (j * period) / jobIds.length)
  const chains = jobIds.map(() => Promise.resolve())
  const finalSeq = jobIds.map(() => 0)
  const rawSeq = jobIds.map((id) => rawSeqs.get(id) ?? 0)
  const lateness: number[] = []
  /** From the emit call to Redis acknowledging it (EVAL or PUBLISH), queueing behind the job's chain included. */
  const acked: number[] = []
  let emitted = 0
  let failed = 0
  const end = start + msg.durationMs
  const emitOne = (j: number) => {
    const jobId = jobIds[j] as string
    const now = clock()
    lateness.push(now - (due[j] as number))
    const progress = emitted % 100
    const event = {
      jobId,
      status: 'running' as const,
      progress,
      message: now.toFixed(3),
      timestamp: new Date().toISOString(),
      type: 'train_lora' as const,
      attempt: 1,
    }
    emitted += 1
    if (mode === 'ours') {
      chains[j] = (chains[j] as Promise<void>)
        .then(() => emitEvent(redis, event))
        .then(
          (e) => {
            acked.push(clock() - now)
            finalSeq[j] = e.seq
          },
          () => {
            failed += 1
          },
        )
    } else {
      const seq = (rawSeq[j] as number) + 1
      rawSeq[j] = seq
      const { type, attempt, ...head } = event
      const json = `${JSON.stringify(head).slice(0, -1)},"seq":${seq},${JSON.stringify({ type, attempt }).slice(1)}`
      chains[j] = redis.publish(`${msg.rawPrefix}${jobId}`, json).then(
        () => {
          acked.push(clock() - now)
        },
        () => {
          failed += 1
        },
      )
    }
  }
  await new Promise<void>((resolve) => {
    const tick = () => {
      const now = clock()
      if (now >= end) return resolve()
      for (let j = 0; j < jobIds.length; j++)
        while ((due[j] as number) <= now && (due[j] as number) < end) {
          emitOne(j)
          due[j] = (due[j] as number) + period
        }
      setTimeout(tick, 1)
    }
    setTimeout(tick, Math.max(0, start - clock()))
  })
  await Promise.all(chains)
  if (mode === 'raw')
    for (const [j, id] of jobIds.entries()) {
      rawSeqs.set(id, rawSeq[j] as number)
      finalSeq[j] = rawSeq[j] as number
    }
  process.send?.({
    op: 'run',
    id: msg.id,
    emitted,
    failed,
    startedAt: start,
    endedAt: clock(),
    finalSeq: Object.fromEntries(jobIds.map((id, j) => [id, finalSeq[j]])),
    latenessMs: rounded(summarize(lateness), 3),
    ackedMs: acked,
  })
}

process.on('message', (msg: RunMsg | { op: 'exit' }) => {
  if (msg.op === 'run') void run(msg)
  else if (msg.op === 'exit') {
    redis.disconnect()
    process.exit(0)
  }
})
process.on('disconnect', () => process.exit(0))
await redis.ping()
process.send?.({ op: 'ready' })
