/** The SQL form of the lifecycle's write guard (`mayWrite` in lifecycle.ts), for the row writer. */
import { and, eq, inArray, lt, notInArray, type SQL, sql } from 'drizzle-orm'
import { TERMINAL_STATUSES } from '../common.ts'
import { jobs } from '../db/tables.ts'
import type { RowWrite } from './lifecycle.ts'

export const unfinished = () => notInArray(jobs.status, [...TERMINAL_STATUSES])

/**
 * The WHERE clause of a row write: the same cases as `mayWrite`, which a test checks row by row.
 * (`lost` and `waiting` writes add conditions on age and message that the pure guard leaves out.)
 */
export function guard(write: RowWrite): SQL {
  switch (write.kind) {
    case 'start':
    case 'cancel':
      return unfinished()
    case 'progress':
      return and(unfinished(), eq(jobs.attempt, write.attempt), eq(jobs.status, 'running')) as SQL
    case 'finish':
      return and(unfinished(), eq(jobs.attempt, write.attempt)) as SQL
    case 'lost':
      return and(unfinished(), eq(jobs.status, write.status), eq(jobs.attempt, write.attempt)) as SQL
    case 'waiting':
      return and(unfinished(), inArray(jobs.status, ['queued', 'retrying'])) as SQL
  }
}

/** Rows nobody wrote for `graceMs`. */
export const olderThan = (graceMs: number) =>
  lt(jobs.updatedAt, sql`now() - make_interval(secs => ${graceMs / 1000})`)
