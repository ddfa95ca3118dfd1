/** The one error mapper: `ApiError`s as they are, a backing service down as 503, the rest as 500. */
import type { Context, ErrorHandler, NotFoundHandler } from 'hono'
import type { Logger } from 'pino'
import { ApiError, BackendUnavailableError, backendOf, isBackendDown } from '../errors.ts'

const answer = (c: Context, err: ApiError) => c.json(err.toJSON(), err.status, err.headers)

/**
 * Hono's `onError`. Logs the path only, never the query (it may hold `?token=`) nor a header.
 *
 * @example app.onError(errorHandler({ logger }))
 */
export const errorHandler =
  ({ logger }: { logger: Logger }): ErrorHandler =>
  (err, c) => {
    if (err instanceof BackendUnavailableError) {
      logger.warn({ err: (err.cause as Error | undefined)?.message, path: c.req.path }, err.message)
      return answer(c, err)
    }
    if (err instanceof ApiError) return answer(c, err)
    if (isBackendDown(err)) {
      const down = new BackendUnavailableError(backendOf(err))
      logger.warn({ err: err.message, path: c.req.path }, down.message)
      return answer(c, down)
    }
    logger.error({ err, path: c.req.path }, 'unhandled error')
    return c.json({ error: { code: 'internal', message: 'internal error' } }, 500)
  }

export const notFound: NotFoundHandler = (c) =>
  answer(c, new ApiError(404, 'not_found', `no route ${c.req.method} ${c.req.path}`))
