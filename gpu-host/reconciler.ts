/**
 * The reconciler: Postgres says what should exist, and when Redis lost its data (no AOF, a failover to
 * an empty replica, a flush) a job row can stay `queued`, `retrying` or `running` for ever with no
 * BullMQ job behind it. Each GPU host runs a pass at start and then periodically, one host at a time
 * (a Redis lock with a TTL):
 *
 * - every unfinished row nobody wrote for the grace period whose BullMQ job is gone is added again from
 *   the row (type, params, owner, priority, timeout, maxAttempts; same jobId; a retrying job keeps its
 *   next attempt time) when it has an attempt left, else failed with reason `lost`;
 * - jobs that ended cancelled or failed lose the files under their prefix that no manifest covers (e.g.
 *   a job cancelled while it waited to retry, which no host was running).
 *
 * Row first, then the event (published and recorded), then the BullMQ add: every row write is guarded by
 * status, attempt and age, so a host or gateway that writes the row meanwhile wins, and an add that fails
 * leaves a row the next pass finds again.
 */
import type { S3Client } from '@aws-sdk/client-s3'
import type { Queue } from 'bullmq'
import type { Redis } from 'ioredis'
import type { Logger } from 'pino'
import type { JobRow } from '../schema/db/tables.ts'
import type { JobEnvelope } from '../schema/envelope.ts'
import { apply } from '../schema/jobs/apply.ts'
import { decide, type Transition } from '../schema/jobs/lifecycle.ts'
import { QUEUE_NAME, seqKey } from '../schema/keys.ts'
import { JOB_TYPES } from '../schema/params/index.ts'
import { emitEvent } from '../schema/progress-log.ts'
import type { HostMetrics } from './metrics.ts'
import { removeUncovered } from './s3-artifacts.ts'
import type { JobState } from './state.ts'

export interface ReconcilerOptions {
  /**
   * Default true. It assumes one database per queue (QUEUE_PREFIX): a row whose job is not in this
   * host's queue is taken as lost. Test stacks that share a database across prefixes turn it off.
   */
  enabled?: boolean
  /** Time between passes (default 60 s). */
  intervalMs?: number
  /** A row written within this long is left alone (default 60 s): never race a gateway's submit. */
  graceMs?: number
  /** Rows looked at per pass, of each kind (default 500). */
  batch?: number
  /** How far back the first sweep of ended jobs' partial files looks when Redis has no cursor (24 h). */
  lookbackMs?: number
}

export { RECONCILE_ACTIONS, type ReconcileAction } from '../schema/jobs/lifecycle.ts'

export interface ReconcileReport {
  requeued: string[]
  failed: string[]
  /** Partial files removed from ended jobs. */
  filesRemoved: number
}

/** Retention of re-added jobs: the gateway's submit uses the same. */
const JOB_RETENTION = {
  removeOnComplete: { age: 7 * 86_400, count: 10_000 },
  removeOnFail: { age: 30 * 86_400, count: 50_000 },
}

/** Deletes the lock only if this host still holds it (its TTL may have run out and another taken it). */
const RELEASE_LOCK = `if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0`

export class Reconciler {
  private readonly intervalMs: number
  private readonly graceMs: number
  private readonly batch: number
  private readonly lookbackMs: number
  private readonly lockKey: string
  private readonly cursorKey: string
  private timer: NodeJS.Timeout | undefined
  private current: Promise<unknown> = Promise.resolve()
  private stopped: boolean

  constructor(
    private readonly deps: {
      redis: Redis
      queue: Queue
      state: JobState
      s3: S3Client
      bucket: string
      queuePrefix: string
      hostId: string
      metrics: HostMetrics
      logger: Logger
      /** Jobs this host runs now: never reconciled by it. */
      isLocal: (jobId: string) => boolean
    },
    opts: ReconcilerOptions = {},
  ) {
    this.stopped = opts.enabled === false
    this.intervalMs = opts.intervalMs ?? 60_000
    this.graceMs = opts.graceMs ?? 60_000
    this.batch = opts.batch ?? 500
    this.lookbackMs = opts.lookbackMs ?? 86_400_000
    // Beside the queue's own keys (same prefix, so the same Redis Cluster slot tag and test isolation).
    this.lockKey = `${deps.queuePrefix}:${QUEUE_NAME}:reconciler:lock`
    this.cursorKey = `${deps.queuePrefix}:${QUEUE_NAME}:reconciler:swept-until`
  }

  /** A pass now, then one every interval. */
  start(): void {
    const tick = () => {
      if (this.stopped) return
      this.current = this.runOnce()
        .catch((err: unknown) =>
          this.deps.logger.warn({ err: (err as Error).message }, 'reconcile pass failed'),
        )
        .finally(() => {
          if (!this.stopped) this.timer = setTimeout(tick, this.intervalMs)
          this.timer?.unref()
        })
    }
    tick()
  }

  async stop(): Promise<void> {
    this.stopped = true
    clearTimeout(this.timer)
    await this.current
  }

  /** One pass; null when another host holds the lock. */
  async runOnce(): Promise<ReconcileReport | null> {
    const { redis } = this.deps
    const token = `${this.deps.hostId}:${process.pid}:${Math.random().toString(36).slice(2)}`
    // The TTL outlives a pass; a host that dies holding the lock only delays the next pass.
    const ttlMs = Math.max(30_000, 2 * this.intervalMs)
    if ((await redis.set(this.lockKey, token, 'PX', ttlMs, 'NX')) !== 'OK') return null
    try {
      const report: ReconcileReport = { requeued: [], failed: [], filesRemoved: 0 }
      await this.reconcileUnfinished(report)
      report.filesRemoved = await this.sweepEnded()
      if (report.requeued.length || report.failed.length || report.filesRemoved)
        this.deps.logger.warn(
          { requeued: report.requeued, failed: report.failed, filesRemoved: report.filesRemoved },
          'reconciled jobs the queue had lost',
        )
      return report
    } finally {
      await redis.eval(RELEASE_LOCK, 1, this.lockKey, token).catch(() => {})
    }
  }

  private async reconcileUnfinished(report: ReconcileReport): Promise<void> {
    const { queue, state } = this.deps
    for (const row of await state.staleUnfinished(this.graceMs, this.batch)) {
      if (this.deps.isLocal(row.id)) continue
      if (await queue.getJob(row.id)) continue
      const t = decide(
        {
          kind: 'lost',
          status: row.status,
          progress: row.progress,
          nextAttemptAt: row.nextAttemptAt,
          knownType: (JOB_TYPES as readonly string[]).includes(row.type),
        },
        row.attempt,
        // No retry backoff applies: a lost job is added again at once (or at its next attempt time).
        { maxAttempts: row.maxAttempts, retry: { baseMs: 0, maxMs: 0 } },
      )
      if (await this.settle(row, t)) report[t.status === 'failed' ? 'failed' : 'requeued'].push(row.id)
    }
  }

  /**
   * The row (guarded by status, attempt and age), then metrics and, for a failed job, its partial files
   * (whoever gets the failed event finds no output without a manifest), then the event, then the add.
   */
  private async settle(row: JobRow, t: Transition): Promise<boolean> {
    const { redis, queue, state, metrics, s3, bucket, logger } = this.deps
    const wrote = await apply({ jobId: row.id, type: row.type }, t, {
      write: (w) => state.markLost(row, this.graceMs, w),
      count: (counts) => metrics.count(row.type, counts),
      dropPartial: () =>
        removeUncovered(s3, bucket, row.outputPrefix).then(
          () => {},
          (err: unknown) =>
            logger.warn({ err: (err as Error).message, jobId: row.id }, 'could not remove partial artifacts'),
        ),
      emit: async (event, terminal) => {
        // Redis may have lost the job's seq counter too: go on from the last seq Postgres knows, so the
        // event is not taken for one recorded already (and followers see seq rise).
        await redis.set(seqKey(row.id), String(row.lastSeq), 'NX')
        return emitEvent(redis, event, { terminal })
      },
      record: (event) => state.recordEvent(event),
    })
    if (wrote && t.queue.kind === 'add')
      await queue.add(row.type, envelopeOf(row), {
        jobId: row.id,
        ...(row.priority === null ? {} : { priority: row.priority }),
        ...(t.queue.delayMs > 0 ? { delay: t.queue.delayMs } : {}),
        ...JOB_RETENTION,
      })
    return wrote
  }

  /** Removes partial files of jobs that ended cancelled or failed since the last sweep. */
  private async sweepEnded(): Promise<number> {
    const { redis, state, s3, bucket, logger } = this.deps
    const saved = Number(await redis.get(this.cursorKey))
    const since = new Date(saved > 0 ? saved : Date.now() - this.lookbackMs)
    let removed = 0
    let cursor = since.getTime()
    for (const row of await state.endedUnfinished(since, this.graceMs, this.batch)) {
      try {
        removed += await removeUncovered(s3, bucket, row.outputPrefix)
      } catch (err) {
        logger.warn({ err: (err as Error).message, jobId: row.id }, 'could not remove partial artifacts')
      }
      // +1 ms: Postgres keeps microseconds, a JS date milliseconds; never sweep the last row again.
      cursor = Math.max(cursor, (row.finishedAt?.getTime() ?? 0) + 1)
    }
    if (cursor > since.getTime()) await redis.set(this.cursorKey, String(cursor))
    return removed
  }
}

/** The BullMQ payload of a job re-added from its row (same jobId, a retrying job keeps its attempt time). */
const envelopeOf = (row: JobRow): JobEnvelope => ({
  jobId: row.id,
  type: row.type,
  params: row.params,
  artifacts: { outputPrefix: row.outputPrefix },
  owner: row.owner,
  maxAttempts: row.maxAttempts,
  ...(row.priority === null ? {} : { priority: row.priority }),
  ...(row.timeoutSec === null ? {} : { timeoutSec: row.timeoutSec }),
  ...(row.gpu === null ? {} : { gpu: row.gpu }),
})
