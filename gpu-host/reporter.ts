import type { Job } from 'bullmq'
import type { Redis } from 'ioredis'
import type { JobStatus } from '../schema/common.ts'
import type { MetricPoint } from '../schema/db/events.ts'
import type { ProgressEvent, ProgressMetrics, UnsequencedEvent } from '../schema/events.ts'
import type { JobRecords } from '../schema/jobs/records.ts'
import type { JobType } from '../schema/params/index.ts'
import { emitEvent } from '../schema/progress-log.ts'

/** Postgres and BullMQ see progress at most this often per job; Redis sees every event. */
const PERSIST_INTERVAL_MS = 250
/** Events waiting for Redis beyond this are coalesced (a handler flooding progress): the newest wins. */
const MAX_PENDING = 1000
/** Metric points kept per attempt; beyond, they still ride on the events but are counted, not stored. */
export const MAX_METRIC_POINTS = 5000

/**
 * Publishes one attempt's events in order (replay log + pub/sub, then the job row and BullMQ's progress,
 * throttled). Never throws into the job: a failed write is logged and the next one catches up.
 */
export class Reporter {
  progress = 0
  message = ''
  lastProgressAt = Date.now()
  private chain: Promise<unknown> = Promise.resolve()
  private pending = 0
  private lastPersist = 0
  private persistTimer: NodeJS.Timeout | undefined
  private latest: ProgressEvent | undefined
  /** Metric points published but not stored yet (written with the throttled progress). */
  private points: MetricPoint[] = []
  private pointsKept = 0
  /** Metric points past MAX_METRIC_POINTS, not stored. */
  metricPointsDropped = 0

  constructor(
    private readonly redis: Redis,
    private readonly state: Pick<JobRecords, 'progress'> & {
      recordMetrics?(points: MetricPoint[]): Promise<void>
    },
    private readonly job: Job,
    private readonly info: { jobId: string; type: JobType; attempt: number },
    private readonly log: (msg: string, err?: unknown) => void,
  ) {}

  private event(status: JobStatus, progress: number, message: string) {
    return { ...this.info, status, progress, message, timestamp: new Date().toISOString() }
  }

  /** Emits a status event of this attempt now (running, retrying, ...) and returns it with its seq. */
  emit(status: JobStatus, progress: number, message: string, terminal = false): Promise<ProgressEvent> {
    return this.publish(this.event(status, progress, message), terminal)
  }

  /** Publishes `event` after every event queued before it (the attempt's seq order). */
  publish(event: UnsequencedEvent, terminal = false): Promise<ProgressEvent> {
    const next = this.chain.then(() => emitEvent(this.redis, event, { terminal }))
    this.chain = next.catch(() => {})
    return next
  }

  /** A progress report from the handler. */
  report(percent: number, message: string | undefined, metrics?: ProgressMetrics): void {
    // Progress never goes backwards within an attempt; a message alone keeps the last percent.
    this.progress = Math.max(this.progress, percent)
    if (message !== undefined) this.message = message
    this.lastProgressAt = Date.now()
    if (this.pending >= MAX_PENDING) return
    this.pending += 1
    const progress = this.progress
    const text = this.message
    this.chain = this.chain
      .then(async () => {
        this.pending -= 1
        const event = await emitEvent(this.redis, {
          ...this.event('running', progress, text),
          ...(metrics === undefined ? {} : { metrics }),
        })
        this.latest = event
        if (metrics !== undefined) this.keepPoint(event, metrics)
        this.schedulePersist()
      })
      .catch((err: unknown) => this.log('could not publish progress', err))
  }

  private keepPoint(event: ProgressEvent, metrics: ProgressMetrics): void {
    if (this.pointsKept >= MAX_METRIC_POINTS) {
      if (this.metricPointsDropped++ === 0)
        this.log(`more than ${MAX_METRIC_POINTS} metric points in this attempt: the rest are not stored`)
      return
    }
    this.pointsKept += 1
    const { jobId, seq, attempt, progress, timestamp } = event
    this.points.push({ jobId, seq, attempt, progress, metrics, at: new Date(timestamp) })
  }

  private schedulePersist(): void {
    const wait = this.lastPersist + PERSIST_INTERVAL_MS - Date.now()
    if (wait <= 0) void this.persist()
    else this.persistTimer ??= setTimeout(() => void this.persist(), wait)
  }

  private async persist(): Promise<void> {
    clearTimeout(this.persistTimer)
    this.persistTimer = undefined
    const event = this.latest
    if (!event) return
    this.lastPersist = Date.now()
    const points = this.points
    this.points = []
    await Promise.all([
      this.state.progress(this.info.jobId, this.info.attempt, event),
      this.job.updateProgress(event.progress),
      points.length > 0 ? this.state.recordMetrics?.(points) : undefined,
    ]).catch((err: unknown) => this.log('could not persist progress', err))
  }

  /** Waits for every queued event to be published and the last progress to be stored. */
  async flush(): Promise<void> {
    await this.chain
    if (this.persistTimer) await this.persist()
  }
}

/**
 * Calls `log` once as a job's progress passes each quarter (25, 50, 75 %), so the service log shows how a
 * job goes without a line per progress event (the events themselves are in the job's history).
 */
export function progressMilestones(log: (pct: number, message: string) => void) {
  let next = 25
  return {
    reached(pct: number, message: string): void {
      let passed: number | undefined
      while (next < 100 && pct >= next) {
        passed = next
        next += 25
      }
      if (passed !== undefined) log(passed, message)
    },
  }
}
