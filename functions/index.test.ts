import { existsSync } from 'node:fs'
import { readdir } from 'node:fs/promises'
import path from 'node:path'
import { fileURLToPath, pathToFileURL } from 'node:url'
import { describe, expect, it } from 'vitest'
import { JOB_CATALOG, JOB_TYPES, type JobType } from '../schema/params/index.ts'
import { handlerFor, handlers } from './index.ts'

/** Folders under functions/ that hold support code, not a handler. */
const NOT_HANDLERS = new Set(['sdk', 'formats'])

const here = path.dirname(fileURLToPath(import.meta.url))
const root = path.dirname(here)
const handlerFolders = (await readdir(here, { withFileTypes: true }))
  .filter(
    (d) => d.isDirectory() && !NOT_HANDLERS.has(d.name) && existsSync(path.join(here, d.name, 'index.ts')),
  )
  .map((d) => d.name)
  .sort()

const importDefault = async (file: string): Promise<unknown> =>
  ((await import(pathToFileURL(file).href)) as { default?: unknown }).default

describe('the job catalog (schema/params/catalog.ts) and the handlers loaded from it (functions/index.ts)', () => {
  it('finds the handler folders', () => {
    expect(handlerFolders.length).toBeGreaterThan(0)
  })

  it.each(handlerFolders)('lists functions/%s/, whose handler type is its folder name', async (folder) => {
    const handler = await importDefault(path.join(here, folder, 'index.ts'))
    expect(handler, `functions/${folder}/index.ts must default-export defineHandler({...})`).toBeDefined()
    expect(JOB_TYPES, `add ${folder} to JOB_CATALOG in schema/params/catalog.ts`).toContain(folder)
    expect(handlers, `functions/${folder}/index.ts is not the module its catalog entry names`).toContain(
      handler,
    )
    expect((handler as { type: string }).type).toBe(folder)
  })

  it.each(JOB_TYPES)(
    "names a handler module for %s that exists and exports that type's handler",
    async (type) => {
      const file = path.join(root, JOB_CATALOG[type as JobType].handler)
      expect(existsSync(file), `${JOB_CATALOG[type as JobType].handler} does not exist`).toBe(true)
      const handler = (await importDefault(file)) as { type?: unknown; run?: unknown } | undefined
      expect(handler?.type).toBe(type)
      expect(typeof handler?.run).toBe('function')
      expect(handlerFor(type)).toBe(handler)
    },
  )

  it('has one handler per type, and no two with the same type', () => {
    const types = handlers.map((h) => h.type)
    expect(new Set(types).size).toBe(types.length)
    expect([...types].sort()).toEqual([...JOB_TYPES].sort())
    expect([...types].sort()).toEqual(handlerFolders)
  })

  it('resolves every job type with handlerFor', () => {
    for (const type of JOB_TYPES) expect(handlerFor(type).type).toBe(type)
  })

  it("gives every handler its catalog entry's schema and limits", () => {
    for (const type of JOB_TYPES) {
      const { params, defaults } = JOB_CATALOG[type]
      expect(handlerFor(type)).toMatchObject({
        params,
        timeoutSec: defaults.timeoutSec,
        maxAttempts: defaults.maxAttempts,
        gpu: { vramMb: defaults.vramMb },
      })
    }
  })
})
