import { readFile } from 'node:fs/promises'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { Hono } from 'hono'

const dir = path.dirname(fileURLToPath(import.meta.url))

/** The web console: static files served as they are (no build step). */
export const consoleApp = new Hono()
consoleApp.get('/', async (c) => c.html(await readFile(path.join(dir, 'index.html'), 'utf8')))
