/**
 * The rate rules: requests per token (`rateLimit`, after auth) and failed authentications per client
 * address (`authFailureLimit`, before auth, so that guessing tokens is slow).
 */
import { getConnInfo } from '@hono/node-server/conninfo'
import type { Context, MiddlewareHandler } from 'hono'
import { ApiError } from '../errors.ts'
import type { RateLimiter } from '../rate-limit.ts'

/** Wrong tokens a client address may send in a burst, and how many more per second after that. */
export const AUTH_FAILURE_BURST = 30
export const AUTH_FAILURES_PER_SEC = 2

/** The peer's address (not X-Forwarded-For, which a client can forge); `unknown` outside node-server. */
export const clientAddress = (c: Context): string => {
  try {
    return getConnInfo(c).remote.address ?? 'unknown'
  } catch {
    return 'unknown'
  }
}

const limited = (wait: number, what: string) =>
  new ApiError(429, 'rate_limited', `${what}; retry in ${wait} s`, undefined, { 'retry-after': String(wait) })

/** The refusal of a client address over its wrong-token limit (REST routes and WebSocket upgrades). */
export const wrongTokensLimited = (wait: number): ApiError =>
  limited(wait, 'too many wrong tokens from this address')

/**
 * One request from `limiter` per request of `key(c)`; null: not limited.
 *
 * @example app.use(rateLimit({ limiter: new RateLimiter(50), key: (c) => c.get('owner') }))
 */
export const rateLimit = ({
  limiter,
  key,
  describe,
  onLimited = () => {},
}: {
  limiter: RateLimiter
  key: (c: Context) => string | null
  describe: string
  onLimited?: () => void
}): MiddlewareHandler =>
  async function rateLimit(c, next) {
    const k = key(c)
    if (k !== null) {
      const wait = limiter.take(k)
      if (wait > 0) {
        onLimited()
        throw limited(wait, describe)
      }
    }
    return next()
  }

/**
 * A client address that sent too many wrong tokens gets 429 for any request that presents a token, right
 * or wrong (else the answers would still tell a right guess apart); requests without one pass (probes,
 * the console before a token is entered). Each wrong token (auth sets `authFailed`) costs one.
 */
export const authFailureLimit = ({
  limiter,
  clientKey = clientAddress,
  onLimited = () => {},
}: {
  limiter: RateLimiter
  clientKey?: (c: Context) => string
  onLimited?: () => void
}): MiddlewareHandler =>
  async function authFailureLimit(c, next) {
    const key = clientKey(c)
    const presents = c.req.header('authorization') !== undefined || c.req.query('token') !== undefined
    const wait = presents ? limiter.wait(key) : 0
    if (wait > 0) {
      onLimited()
      throw wrongTokensLimited(wait)
    }
    await next()
    if (c.get('authFailed')) limiter.take(key)
  }
