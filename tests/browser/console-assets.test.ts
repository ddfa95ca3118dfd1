import { readdir } from 'node:fs/promises'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { describe, expect, it } from 'vitest'
import { CONSOLE_ASSETS, consoleApp } from '../../gateway/console/index.ts'

const consoleDir = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../gateway/console')

describe('console static files', () => {
  it('serves the page with a strict content security policy', async () => {
    const res = await consoleApp.request('/')
    expect(res.status).toBe(200)
    expect(res.headers.get('content-type')).toBe('text/html; charset=utf-8')
    expect(res.headers.get('content-security-policy')).toContain("default-src 'none'")
    expect(res.headers.get('content-security-policy')).toContain("connect-src 'self'")
    expect(res.headers.get('x-content-type-options')).toBe('nosniff')
    const html = await res.text()
    expect(html).toContain('<script type="module" src="/console/app.js"></script>')
  })

  it('serves every file the page and its modules refer to, with its content type', async () => {
    const html = await (await consoleApp.request('/')).text()
    const refs = [...html.matchAll(/(?:src|href)="(\/console\/[^"]+)"/g)].map((m) => m[1] as string)
    expect(refs).toEqual(
      expect.arrayContaining(['/console/app.js', '/console/style.css', '/console/favicon.svg']),
    )
    const app = await (await consoleApp.request('/console/app.js')).text()
    for (const m of app.matchAll(/from '\.\/([^']+)'/g)) refs.push(`/console/${m[1]}`)
    expect(refs).toContain('/console/stream.js')
    for (const ref of new Set(refs)) {
      const res = await consoleApp.request(ref)
      expect(res.status, ref).toBe(200)
      expect(res.headers.get('content-type'), ref).toBe(CONSOLE_ASSETS[path.basename(ref)])
      expect(res.headers.get('cache-control'), ref).toBe('no-cache')
    }
  })

  it('serves every module the page loads, following the imports from app.js', async () => {
    const seen = new Set<string>()
    const queue = ['app.js']
    for (let name = queue.shift(); name !== undefined; name = queue.shift()) {
      if (seen.has(name)) continue
      seen.add(name)
      const res = await consoleApp.request(`/console/${name}`)
      expect(res.status, name).toBe(200)
      expect(res.headers.get('content-type'), name).toBe('text/javascript; charset=utf-8')
      const source = await res.text()
      // Static imports only (no build step resolves anything else): `from './x.js'` and `import './x.js'`.
      for (const m of source.matchAll(/(?:from|import)\s+'\.\/([^'/]+\.js)'/g)) queue.push(m[1] as string)
      expect(source, name).not.toMatch(/(?:from|import)\s+'(?!\.\/)[^']+'/)
    }
    // Every module of the folder is part of the page (none is dead, none is missed by the list).
    const modules = Object.keys(CONSOLE_ASSETS).filter((f) => f.endsWith('.js'))
    expect([...seen].sort()).toEqual(modules.sort())
  })

  it('lists every browser file of the folder, and only those', async () => {
    const files = (await readdir(consoleDir)).filter((f) => !f.startsWith('index.') && !f.endsWith('.ts'))
    expect(Object.keys(CONSOLE_ASSETS).sort()).toEqual(files.sort())
  })

  it('refers to nothing outside the gateway (no CDN, no external fonts)', async () => {
    for (const name of await readdir(consoleDir)) {
      if (!/\.(html|css|js)$/.test(name)) continue
      const res = await consoleApp.request(name === 'index.html' ? '/' : `/console/${name}`)
      expect(await res.text(), name).not.toMatch(/(?:src|href|url\()\s*=?\s*["']?(?:https?:)?\/\//)
    }
  })

  it.each([
    '/console/index.ts',
    '/console/index.js',
    '/console/index.js.map',
    '/console/toString',
    '/console/__proto__',
    '/console/stream.d.ts',
    '/console/index.html',
    '/console/..%2Findex.ts',
    '/console/..%2F..%2Fpackage.json',
    '/console/%2e%2e%2fapp.ts',
    '/console/..%5C..%5Cpackage.json',
    '/console/.hidden.js',
    '/console/a..js',
    '/console/missing.js',
    '/console/app.js%00.css',
  ])('refuses %s', async (url) => {
    const res = await consoleApp.request(url)
    expect(res.status).toBe(404)
    expect(res.headers.get('content-type')).toMatch(/^application\/json/)
  })

  it('does not match paths below /console/ (no nested folders to escape from)', async () => {
    for (const url of ['/console/../gateway/app.ts', '/console/x/../../app.ts', '/console/sub/app.js']) {
      const res = await consoleApp.request(url)
      expect(res.status, url).toBe(404)
    }
  })
})
