import { existsSync } from 'node:fs'
import { readdir } from 'node:fs/promises'
import path from 'node:path'
import { fileURLToPath, pathToFileURL } from 'node:url'
import { describe, expect, it } from 'vitest'
import { JOB_TYPES } from '../schema/params/index.ts'
import { handlerFor, handlers } from './index.ts'

/** Folders under functions/ that hold support code, not a handler. */
const NOT_HANDLERS = new Set(['sdk', 'formats'])

const here = path.dirname(fileURLToPath(import.meta.url))
const handlerFolders = (await readdir(here, { withFileTypes: true }))
  .filter(
    (d) => d.isDirectory() && !NOT_HANDLERS.has(d.name) && existsSync(path.join(here, d.name, 'index.ts')),
  )
  .map((d) => d.name)
  .sort()

describe('the handler list (functions/index.ts)', () => {
  it('finds the handler folders', () => {
    expect(handlerFolders.length).toBeGreaterThan(0)
  })

  it.each(handlerFolders)('lists functions/%s/, whose handler type is its folder name', async (folder) => {
    const mod = (await import(pathToFileURL(path.join(here, folder, 'index.ts')).href)) as {
      default?: unknown
    }
    expect(mod.default, `functions/${folder}/index.ts must default-export defineHandler({...})`).toBeDefined()
    expect(handlers, `add functions/${folder} to the list in functions/index.ts`).toContain(mod.default)
    expect((mod.default as { type: string }).type).toBe(folder)
  })

  it('has one handler per type, and no two with the same type', () => {
    const types = handlers.map((h) => h.type)
    expect(new Set(types).size).toBe(types.length)
    expect([...types].sort()).toEqual([...JOB_TYPES].sort())
    expect([...types].sort()).toEqual(handlerFolders)
  })

  it('resolves every job type with handlerFor', () => {
    for (const type of JOB_TYPES) expect(handlerFor(type).type).toBe(type)
  })
})
