/**
 * Who may see a job: everyone without API tokens, else only its owner. Another owner's job is a 404, as
 * if it did not exist, so an id tells nothing about other tokens' jobs.
 *
 * A job is named by its id or by the start of it, at least SHORT_ID_LENGTH characters (the console and the
 * CLI show ids that long), so the short id a person reads off a screen works in every job route. The whole
 * id wins; a start that several of the caller's jobs share is a 409 naming them.
 */
import * as v from 'valibot'
import { JobId, SHORT_ID_LENGTH } from '../../schema/common.ts'
import type { JobRow } from '../../schema/db/tables.ts'
import { ApiError } from '../errors.ts'
import type { JobStore } from '../store.ts'

/**
 * Whether `text` may be the start of a job id: a job id's characters, at least SHORT_ID_LENGTH of them. Not
 * itself a usable id, perhaps: a UUID's first 8 characters may be all digits, which no whole id may be.
 */
const mayStartAnId = (text: string): boolean =>
  text.length >= SHORT_ID_LENGTH && text.length <= 128 && /^[A-Za-z0-9_.-]+$/.test(text)

/** How many of the jobs an ambiguous start names. */
const CANDIDATES_NAMED = 5

/** The 404 of a job the caller may not see, or that does not exist: the two answer alike. */
export const noSuchJob = (jobId: string): ApiError => new ApiError(404, 'not_found', `no job "${jobId}"`)

export interface JobAccess {
  /** Throws the 404 of a text that neither is a job id nor may start one (checked before any read). */
  checkId(jobId: string): void
  /** Whether `owner` may see `row` (a missing row: no). */
  canSee(row: Pick<JobRow, 'owner'> | null | undefined, owner: string | null): boolean
  /** `row` if `owner` may see it, else the 404 of `jobId`. */
  visible<R extends Pick<JobRow, 'owner'>>(jobId: string, row: R | null | undefined, owner: string | null): R
  /**
   * The stored job `jobId` if `owner` may see it, else the one job of theirs whose id starts with it (at
   * least SHORT_ID_LENGTH characters); a 404 when there is none, a 409 when there are several.
   */
  visibleJob(jobId: string, owner: string | null): Promise<JobRow>
}

/** @example const access = jobAccess({ store, authRequired: config.apiTokens.size > 0 }) */
export function jobAccess({ store, authRequired }: { store: JobStore; authRequired: boolean }): JobAccess {
  const access: JobAccess = {
    checkId(jobId) {
      if (!v.is(JobId, jobId) && !mayStartAnId(jobId)) throw new ApiError(404, 'not_found', 'no such job')
    },
    canSee: (row, owner) => !!row && (!authRequired || row.owner === owner),
    visible(jobId, row, owner) {
      if (!row || !access.canSee(row, owner)) throw noSuchJob(jobId)
      return row
    },
    async visibleJob(jobId, owner) {
      access.checkId(jobId)
      const row = v.is(JobId, jobId) ? await store.get(jobId) : undefined
      if (access.canSee(row, owner) && row) return row
      if (!mayStartAnId(jobId)) throw noSuchJob(jobId)
      const found = await store.startingWith(jobId, authRequired ? owner : undefined, CANDIDATES_NAMED + 1)
      const [only, ...more] = found
      if (!only) throw noSuchJob(jobId)
      if (more.length === 0) return only
      const named = found.slice(0, CANDIDATES_NAMED).map((r) => r.id)
      const over = found.length > CANDIDATES_NAMED
      throw new ApiError(
        409,
        'ambiguous_job_id',
        `"${jobId}" starts the ids of ${over ? `more than ${CANDIDATES_NAMED}` : found.length} jobs: ${named.join(', ')}${over ? ', ...' : ''}; give more of the id`,
      )
    },
  }
  return access
}
