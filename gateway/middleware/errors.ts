/** The one error mapper: `ApiError`s as they are, a backing service down as 503, the rest as 500. */
import type { Context, ErrorHandler, Hono, NotFoundHandler } from 'hono'
import { METHOD_NAME_ALL } from 'hono/router'
import { TrieRouter } from 'hono/router/trie-router'
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

const METHODS = ['GET', 'POST', 'PUT', 'PATCH', 'DELETE'] as const

/**
 * Hono's `notFound`, for `app`: a path one of its routes has, asked with a method none takes, is a 405
 * with the methods it takes in `Allow` (`GET /api/jobs/:id/cancel`: POST); any other a 404.
 *
 * @example app.notFound(unmatched(app))
 */
export function unmatched(app: Hono): NotFoundHandler {
  // Built at the first miss, when every route is in: the app's routes by path, valued by their method.
  let router: TrieRouter<string> | undefined
  const methodsOf = (path: string): string[] => {
    if (!router) {
      router = new TrieRouter<string>()
      for (const r of app.routes) if (r.method !== METHOD_NAME_ALL) router.add(r.method, r.path, r.method)
    }
    const found = new Set<string>()
    for (const method of METHODS) for (const [m] of router.match(method, path)[0]) found.add(m)
    // Hono answers HEAD by the GET route.
    if (found.has('GET')) found.add('HEAD')
    return [...found]
  }
  return (c) => {
    const allow = methodsOf(c.req.path)
    // A route that took the method and then found nothing (`c.notFound()`: /ws without an upgrade) is a 404.
    if (allow.length === 0 || allow.includes(c.req.method))
      return answer(c, new ApiError(404, 'not_found', `no route ${c.req.method} ${c.req.path}`))
    return answer(
      c,
      new ApiError(
        405,
        'method_not_allowed',
        `${c.req.path} takes ${allow.join(', ')}, not ${c.req.method}`,
        undefined,
        { allow: allow.join(', ') },
      ),
    )
  }
}
