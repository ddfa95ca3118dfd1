/**
 * The token rule: with API_TOKENS set every route but the public ones needs `Authorization: Bearer`;
 * `?token=` only where a browser cannot send a header (SSE here, the WebSocket in gateway/ws.ts).
 */
import type { MiddlewareHandler } from 'hono'
import { presentedToken, tokenOwner } from '../auth.ts'
import { ApiError } from '../errors.ts'

declare module 'hono' {
  interface ContextVariableMap {
    /** The token's name; null without API tokens (one local user). */
    owner: string | null
    /** A token was presented and matched none: counted by `authFailureLimit`. */
    authFailed: boolean
  }
}

/**
 * Sets `owner`, or answers 401. `/metrics` takes METRICS_TOKEN instead when it is set, and is open when
 * it is not.
 *
 * @example app.use(auth({ tokens, isPublic: (p) => p === '/healthz', acceptsQueryToken: (p) => p.endsWith('/events') }))
 */
export const auth = ({
  tokens,
  metricsToken,
  isPublic,
  acceptsQueryToken,
}: {
  tokens: Map<string, string>
  metricsToken?: string | undefined
  isPublic: (path: string) => boolean
  /** Whether `?token=` is accepted on `path` (with `query`, its query parameters). */
  acceptsQueryToken: (path: string, query: (name: string) => string | undefined) => boolean
}): MiddlewareHandler => {
  const metricsTokens = metricsToken ? new Map([['metrics', metricsToken]]) : null
  return async function auth(c, next) {
    c.set('owner', null)
    c.set('authFailed', false)
    const path = c.req.path
    if (path === '/metrics') {
      if (metricsTokens === null) return next()
      const given = presentedToken(c.req.header('authorization'), undefined)
      if (tokenOwner(metricsTokens, given) !== null) return next()
      if (given !== undefined) c.set('authFailed', true)
      throw new ApiError(401, 'unauthorized', 'METRICS_TOKEN is set: send Authorization: Bearer <token>')
    }
    if (tokens.size === 0 || isPublic(path)) return next()
    const query = acceptsQueryToken(path, (name) => c.req.query(name)) ? c.req.query('token') : undefined
    const given = presentedToken(c.req.header('authorization'), query)
    const owner = tokenOwner(tokens, given)
    if (owner === null) {
      if (given !== undefined) c.set('authFailed', true)
      throw new ApiError(
        401,
        'unauthorized',
        c.req.query('token') !== undefined && query === undefined
          ? 'send Authorization: Bearer <token> (?token= is accepted only on the WebSocket and SSE)'
          : 'send Authorization: Bearer <token> (or ?token= for WebSocket and SSE)',
      )
    }
    c.set('owner', owner)
    return next()
  }
}
