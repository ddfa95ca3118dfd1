/**
 * Who may see a job: everyone without API tokens, else only its owner. Another owner's job is a 404, as
 * if it did not exist, so an id tells nothing about other tokens' jobs.
 */
import * as v from 'valibot'
import { JobId } from '../../schema/common.ts'
import type { JobRow } from '../../schema/db/tables.ts'
import { ApiError } from '../errors.ts'
import type { JobStore } from '../store.ts'

/** The 404 of a job the caller may not see, or that does not exist: the two answer alike. */
export const noSuchJob = (jobId: string): ApiError => new ApiError(404, 'not_found', `no job "${jobId}"`)

export interface JobAccess {
  /** Throws the 404 of an id that no job can have (checked before any read). */
  checkId(jobId: string): void
  /** Whether `owner` may see `row` (a missing row: no). */
  canSee(row: Pick<JobRow, 'owner'> | null | undefined, owner: string | null): boolean
  /** `row` if `owner` may see it, else the 404 of `jobId`. */
  visible<R extends Pick<JobRow, 'owner'>>(jobId: string, row: R | null | undefined, owner: string | null): R
  /** The stored job `jobId` if `owner` may see it, else a 404. */
  visibleJob(jobId: string, owner: string | null): Promise<JobRow>
}

/** @example const access = jobAccess({ store, authRequired: config.apiTokens.size > 0 }) */
export function jobAccess({ store, authRequired }: { store: JobStore; authRequired: boolean }): JobAccess {
  const access: JobAccess = {
    checkId(jobId) {
      if (!v.is(JobId, jobId)) throw new ApiError(404, 'not_found', 'no such job')
    },
    canSee: (row, owner) => !!row && (!authRequired || row.owner === owner),
    visible(jobId, row, owner) {
      if (!row || !access.canSee(row, owner)) throw noSuchJob(jobId)
      return row
    },
    async visibleJob(jobId, owner) {
      access.checkId(jobId)
      return access.visible(jobId, await store.get(jobId), owner)
    },
  }
  return access
}
