/**
 * The cross-site rule: a browser request from a foreign Origin, or for a foreign Host (DNS rebinding), is
 * refused. One home for HTTP (`originGuard`) and the WebSocket upgrade (`checkOrigin` in gateway/ws.ts).
 */
import type { MiddlewareHandler } from 'hono'
import type { Config } from '../../schema/config.ts'
import { ApiError } from '../errors.ts'

export interface OriginPolicy {
  /** Origins besides the gateway's own (ALLOWED_ORIGINS). */
  origins: Set<string>
  /** Host names the gateway answers to; null: any (with API tokens, where a rebound page has no token). */
  hosts: Set<string> | null
}

const LOOPBACK_HOSTS = ['localhost', '127.0.0.1', '[::1]']

/**
 * Without API tokens anyone who can make a browser send a request could run jobs, so the Host must be a
 * loopback name (the gateway listens on loopback only) or one of ALLOWED_ORIGINS' hosts. With tokens the
 * browser never adds the token by itself, so any Host is served; the Origin rule holds in both cases.
 */
export function originPolicy(
  config: Pick<Config, 'apiTokens' | 'allowedOrigins' | 'gatewayHost'>,
): OriginPolicy {
  if (config.apiTokens.size > 0) return { origins: config.allowedOrigins, hosts: null }
  const hosts = new Set(LOOPBACK_HOSTS)
  for (const origin of config.allowedOrigins) hosts.add(new URL(origin).hostname)
  const bind = config.gatewayHost
  if (bind && bind !== '0.0.0.0' && bind !== '::') hosts.add(bind.includes(':') ? `[${bind}]` : bind)
  return { origins: config.allowedOrigins, hosts }
}

const hostnameOf = (host: string): string | null => {
  try {
    return new URL(`http://${host}`).hostname
  } catch {
    return null
  }
}

/**
 * Null when the request may be served; else the 403 to answer. No `Origin` (curl, the CLI, a
 * same-origin GET) passes; an `Origin` must be the gateway's own (same host and port as `Host`) or listed.
 *
 * @example const refused = checkOrigin(req.headers, policy) // IncomingHttpHeaders or { host, origin }
 */
export function checkOrigin(
  headers: { host?: string | undefined; origin?: string | undefined },
  policy: OriginPolicy,
): ApiError | null {
  const host = (headers.host ?? '').toLowerCase()
  if (policy.hosts !== null) {
    const name = hostnameOf(host)
    if (name === null || !policy.hosts.has(name))
      return new ApiError(
        403,
        'forbidden_host',
        'this Host is not one the gateway serves (DNS rebinding?); add its origin to ALLOWED_ORIGINS',
      )
  }
  const origin = headers.origin
  if (origin === undefined) return null
  let url: URL | undefined
  try {
    url = new URL(origin)
  } catch {}
  if (url && (url.protocol === 'http:' || url.protocol === 'https:')) {
    if (policy.origins.has(url.origin)) return null
    // Same origin: the page was served by this gateway under this Host (default ports normalised).
    const own = hostnameOf(host) === null ? null : new URL(`${url.protocol}//${host}`).host
    if (own !== null && url.host === own) return null
  }
  return new ApiError(
    403,
    'forbidden_origin',
    'cross-site request refused: this Origin is not the gateway’s own nor in ALLOWED_ORIGINS',
  )
}

/**
 * Refuses cross-site requests on every route but `exempt` ones (health, readiness and metrics: probes
 * and scrapers call by IP, and those answers carry no data worth a rebinding attack).
 */
export const originGuard = ({
  policy,
  exempt = () => false,
}: {
  policy: OriginPolicy
  exempt?: (path: string) => boolean
}): MiddlewareHandler =>
  async function originGuard(c, next) {
    if (exempt(c.req.path)) return next()
    const refused = checkOrigin({ host: c.req.header('host'), origin: c.req.header('origin') }, policy)
    if (refused) throw refused
    return next()
  }
