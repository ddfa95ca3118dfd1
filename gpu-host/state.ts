import type { Db } from '../schema/db/connect.ts'
import { type MetricPoint, recordMetricPoints } from '../schema/db/events.ts'
import { appendJobLogs, type JobLogLine, type LogCounts } from '../schema/db/logs.ts'
import { retryWhileDown } from '../schema/jobs/db-call.ts'
import { JobRecords } from '../schema/jobs/records.ts'

/**
 * The GPU host's writer of job rows: the shared one (schema/jobs/records.ts, guarded by attempt and
 * terminal state), signed with the host's id in attempt rows, and retrying while Postgres is
 * unreachable, so an attempt's end is not lost to a database restart.
 */
export class JobState extends JobRecords {
  constructor(db: Db, host: string, log: (msg: string) => void = () => {}) {
    super(db, { host, call: retryWhileDown(log) })
  }

  /** Keeps the metrics a job reported with its progress (job_metrics). */
  recordMetrics(points: MetricPoint[]): Promise<void> {
    return this.call('metrics', () => recordMetricPoints(this.db, points))
  }

  /** Keeps a batch of an attempt's log lines and its counts (job_logs, job_log_counts). */
  recordLogs(jobId: string, attempt: number, lines: JobLogLine[], counts: LogCounts): Promise<void> {
    return this.call('logs', () => appendJobLogs(this.db, jobId, attempt, lines, counts))
  }
}
