/**
 * One value per query parameter: `?status=queued&status=failed` is a 400 naming `status`, not the first
 * value read as if it were the only one (the second would be silently ignored).
 */
import type { MiddlewareHandler } from 'hono'
import { ApiError } from '../errors.ts'

/** @example app.use(singleValuedQuery()) */
export const singleValuedQuery = (): MiddlewareHandler => async (c, next) => {
  const url = c.req.url
  // Most requests carry no query: nothing to parse.
  if (url.includes('?')) {
    const seen = new Set<string>()
    for (const name of new URL(url).searchParams.keys()) {
      if (seen.has(name)) {
        const message = 'must be given once'
        throw new ApiError(400, 'invalid_query', `invalid query: ${name} ${message}`, [
          { path: name, message },
        ])
      }
      seen.add(name)
    }
  }
  await next()
}
