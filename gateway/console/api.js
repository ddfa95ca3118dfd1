// The gateway's REST API as the console uses it: the token as a bearer header, errors as ApiError
// (with the API's code and field issues), one wait-and-retry on 429 (fetchWithToken, for every request),
// and the banner on 401.

import { hideBanner, showBanner } from './dom.js'
import { store } from './state.js'

export class ApiError extends Error {
  constructor(status, code, message, issues = []) {
    super(message)
    this.status = status
    this.code = code
    this.issues = issues
  }
}

export const authHeaders = () => {
  const { token } = store.get()
  return token ? { authorization: `Bearer ${token}` } : {}
}

export const jobPath = (id) => `/api/jobs/${encodeURIComponent(id)}`

/**
 * `fetch` with the token, and on 429 (over the token's rate limit: many jobs finishing at once, a busy
 * page) a wait as the answer says, then once more. Every request of the console goes through it, media
 * and downloads included. Rejects only when the gateway cannot be reached.
 */
export async function fetchWithToken(url, { headers = {}, retries = 1, ...init } = {}) {
  const res = await fetch(url, { ...init, headers: { ...headers, ...authHeaders() } })
  if (res.status !== 429 || retries <= 0) return res
  const wait = Math.min(5, Number(res.headers.get('retry-after')) || 1)
  await new Promise((r) => setTimeout(r, wait * 1000))
  return fetchWithToken(url, { ...init, headers, retries: retries - 1 })
}

/** Sends a request; resolves to `{status, json}` of a 2xx, rejects with an ApiError. */
export async function request(path, { method = 'GET', body } = {}) {
  const headers = { accept: 'application/json' }
  if (body !== undefined) headers['content-type'] = 'application/json'
  let res
  try {
    res = await fetchWithToken(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    })
  } catch {
    throw new ApiError(0, 'unreachable', 'The gateway cannot be reached.')
  }
  const text = await res.text()
  let json = null
  try {
    json = text ? JSON.parse(text) : null
  } catch {
    json = null
  }
  if (!res.ok) {
    const e = json?.error
    const err = new ApiError(
      res.status,
      e?.code ?? `http_${res.status}`,
      e?.message ?? res.statusText,
      e?.issues ?? [],
    )
    if (res.status === 401)
      showBanner('This gateway needs an API token: enter it at the top right and press Save.')
    throw err
  }
  if (res.status !== 401) hideBanner('auth')
  return { status: res.status, json }
}

/** The JSON body of a request. */
export const api = async (path, opts) => (await request(path, opts)).json
