import type { Db } from '../schema/db/connect.ts'
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
}
