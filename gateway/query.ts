/**
 * A route's query parameters, one value each: `?status=queued&status=failed` is a 400 naming `status`, not
 * the first value read as if it were the only one. Only the parameters a route reads are checked: one it
 * ignores is ignored however often it comes (a page's cache-busting `?v=`).
 */
import type { Context } from 'hono'
import { ApiError } from './errors.ts'

/**
 * The value of query parameter `name`, or undefined; a 400 naming it when it is given more than once.
 *
 * @example const attempt = queryValue(c, 'attempt')
 */
export function queryValue(c: Context, name: string): string | undefined {
  const values = c.req.queries(name)
  if (values === undefined || values.length === 0) return undefined
  if (values.length > 1) {
    const message = 'must be given once'
    throw new ApiError(400, 'invalid_query', `invalid query: ${name} ${message}`, [{ path: name, message }])
  }
  return values[0]
}

/**
 * The values of the query parameters `names` (those given), each checked by `queryValue`.
 *
 * @example const { limit, q } = queryValues(c, ['limit', 'q'] as const)
 */
export function queryValues<const N extends string>(
  c: Context,
  names: readonly N[],
): Partial<Record<N, string>> {
  const out: Partial<Record<N, string>> = {}
  for (const name of names) {
    const value = queryValue(c, name)
    if (value !== undefined) out[name] = value
  }
  return out
}
