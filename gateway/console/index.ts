import { readFile } from 'node:fs/promises'
import { createRequire } from 'node:module'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { Hono } from 'hono'

const dir = path.dirname(fileURLToPath(import.meta.url))

const JAVASCRIPT = 'text/javascript; charset=utf-8'
const CSS = 'text/css; charset=utf-8'

/**
 * The files served under /console/, by name, with their content types: the page's modules (app.js
 * starts it; stream.js is shared with the CLI), its styles (style.css first) and icon. A list rather
 * than "whatever is in this folder": the folder also holds this module (index.ts, or index.js and its
 * map once built) and stream.d.ts, which are not for browsers. A name not listed is a 404, and the
 * route takes one path segment, so no path can leave the folder (or reach into a subfolder).
 */
export const CONSOLE_ASSETS: Readonly<Record<string, string>> = {
  'app.js': JAVASCRIPT,
  'api.js': JAVASCRIPT,
  'artifacts.js': JAVASCRIPT,
  'attempts.js': JAVASCRIPT,
  'dom.js': JAVASCRIPT,
  'format.js': JAVASCRIPT,
  'hosts.js': JAVASCRIPT,
  'job-actions.js': JAVASCRIPT,
  'job-detail.js': JAVASCRIPT,
  'job-logs.js': JAVASCRIPT,
  'job-types.js': JAVASCRIPT,
  'jobs-list.js': JAVASCRIPT,
  'live.js': JAVASCRIPT,
  'loss-chart.js': JAVASCRIPT,
  'params-view.js': JAVASCRIPT,
  'previews.js': JAVASCRIPT,
  'queue-overview.js': JAVASCRIPT,
  'schema-form.js': JAVASCRIPT,
  'state.js': JAVASCRIPT,
  'stream.js': JAVASCRIPT,
  'submit-form.js': JAVASCRIPT,
  'tabs.js': JAVASCRIPT,
  'topbar.js': JAVASCRIPT,
  'style.css': CSS,
  'layout.css': CSS,
  'tables.css': CSS,
  'detail.css': CSS,
  'favicon.svg': 'image/svg+xml',
}

/**
 * Libraries the page imports as they are published, served from node_modules under /console/vendor/ by
 * name: each an ES module with no imports of its own. The name is looked up here, never joined to a path.
 */
export const VENDOR_MODULES: Readonly<Record<string, string>> = {
  // The logs tab reads `?follow=1` (SSE) with fetch, to send the token as a header. The package's ES
  // module build (its `module` entry), found beside its package.json wherever npm put it.
  'eventsource-parser.js': path.join(
    path.dirname(createRequire(import.meta.url).resolve('eventsource-parser/package.json')),
    'dist/index.js',
  ),
}

/**
 * The page allows only its own scripts, styles and connections (fetch and the WebSocket), blob: for
 * downloads made with a token, and cannot be framed.
 */
export const CONSOLE_CSP = [
  "default-src 'none'",
  "script-src 'self'",
  "style-src 'self'",
  "img-src 'self' data: blob:",
  // Previews of audio and video artifacts: the download route, or a blob of it fetched with the token.
  "media-src 'self' blob:",
  "connect-src 'self'",
  "base-uri 'none'",
  "form-action 'none'",
  "frame-ancestors 'none'",
].join('; ')

const securityHeaders = {
  'x-content-type-options': 'nosniff',
  'referrer-policy': 'no-referrer',
  'x-frame-options': 'DENY',
}

const notFound = (file: string) => ({ error: { code: 'not_found', message: `no console file "${file}"` } })

async function readAsset(name: string): Promise<Buffer | null> {
  try {
    return await readFile(path.join(dir, name))
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT' || (err as NodeJS.ErrnoException).code === 'EISDIR')
      return null
    throw err
  }
}

/**
 * The web console: `GET /` is the page, `GET /console/<file>` its script, styles and icons, served as they
 * are from this folder (no build step). Read on each request (they are small), so an edit shows on reload;
 * `no-cache` makes browsers revalidate instead of running a stale script against a newer gateway.
 */
export const consoleApp = new Hono()

consoleApp.get('/', async (c) => {
  const html = await readAsset('index.html')
  if (!html) return c.json(notFound('index.html'), 404)
  return c.body(new Uint8Array(html), 200, {
    'content-type': 'text/html; charset=utf-8',
    'cache-control': 'no-cache',
    'content-security-policy': CONSOLE_CSP,
    ...securityHeaders,
  })
})

consoleApp.get('/console/vendor/:file', async (c) => {
  const file = c.req.param('file')
  const at = Object.hasOwn(VENDOR_MODULES, file) ? VENDOR_MODULES[file] : undefined
  if (!at) return c.json(notFound(`vendor/${file}`), 404)
  return c.body(new Uint8Array(await readFile(at)), 200, {
    'content-type': JAVASCRIPT,
    'cache-control': 'no-cache',
    ...securityHeaders,
  })
})

consoleApp.get('/console/:file', async (c) => {
  const file = c.req.param('file')
  const type = Object.hasOwn(CONSOLE_ASSETS, file) ? CONSOLE_ASSETS[file] : undefined
  if (!type) return c.json(notFound(file), 404)
  const body = await readAsset(file)
  if (!body) return c.json(notFound(file), 404)
  return c.body(new Uint8Array(body), 200, {
    'content-type': type,
    'cache-control': 'no-cache',
    ...securityHeaders,
  })
})
