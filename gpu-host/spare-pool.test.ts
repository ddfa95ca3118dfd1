/**
 * The spare pool and the compiled child, with real forks: spares per device, enough for a burst, each
 * running the esbuild bundle (no tsx) with every handler module imported before 'ready'; the bundle is
 * reused while the sources are unchanged and rebuilt when they change.
 */
import { existsSync } from 'node:fs'
import { mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { pathToFileURL } from 'node:url'
import pino from 'pino'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { DirectoryArtifactStore } from '../functions/sdk/local-artifacts.ts'
import { loadConfig } from '../schema/config.ts'
import { importedMarker } from '../tests/fixtures/handlers/marks-import.ts'
import { fixtureHandler, fixtureJob } from '../tests/helpers/fixture-process.ts'
import { buildChildBundle, buildHandlerBundle } from './child-bundle.ts'
import { type ChildSpawn, handlerModuleFile, prepareHandlerModules } from './child-spawn.ts'
import { JobProcess } from './runner.ts'
import { SparePool, sparesPerDevice } from './spare-pool.ts'

const logger = pino({ level: 'silent' })
const MARKS = fixtureHandler('marks-import')
let cache: string
let root: string

beforeAll(async () => {
  cache = await mkdtemp(path.join(tmpdir(), 'child-cache-'))
  root = await mkdtemp(path.join(tmpdir(), 'spare-pool-'))
  // The pool's bundle goes to this test's own cache (child-spawn reads it when it first bundles).
  process.env.GPU_JOBS_CHILD_CACHE = cache
})
afterAll(async () => {
  await rm(cache, { recursive: true, force: true })
  await rm(root, { recursive: true, force: true })
  // Importing the fixture here (for importedMarker) marked this process too.
  await rm(importedMarker(process.pid), { force: true })
})

async function untilReady(spares: ChildSpawn[], ms = 30_000): Promise<void> {
  const end = Date.now() + ms
  while (!spares.every((s) => s.ready)) {
    if (Date.now() > end) throw new Error('spares not ready in time')
    await sleep(20)
  }
}

const cmdline = async (pid: number): Promise<string[]> =>
  (await readFile(`/proc/${pid}/cmdline`, 'utf8')).split('\0').filter(Boolean)
const environ = async (pid: number): Promise<string[]> =>
  (await readFile(`/proc/${pid}/environ`, 'utf8')).split('\0').filter(Boolean)

describe('child bundle', () => {
  it('is reused while the sources are unchanged and rebuilt when one changes', async () => {
    const dir = await mkdtemp(path.join(tmpdir(), 'child-bundle-'))
    const probe = path.join(path.dirname(MARKS), '../../../functions', `zz-bundle-probe-${process.pid}.ts`)
    try {
      const first = await buildChildBundle(dir)
      const again = await buildChildBundle(dir)
      expect(first.built).toBe(true)
      expect(again).toMatchObject({ built: false, file: first.file })
      await writeFile(probe, 'export const probe = 1\n')
      const changed = await buildChildBundle(dir)
      expect(changed.built).toBe(true)
      expect(changed.file).not.toBe(first.file)
      // Written by rename: no temp file is left beside the bundles.
      expect((await readdir(dir)).sort()).toEqual(
        [path.basename(first.file), path.basename(changed.file)].sort(),
      )
      const text = await readFile(changed.file, 'utf8')
      // The catalog's handlers are compiled in, and no tsx loader is.
      expect(text).toContain('defineHandler')
      expect(text).not.toMatch(/from ["']tsx["']|--import tsx/)
    } finally {
      await rm(probe, { force: true })
      await rm(dir, { recursive: true, force: true })
    }
  })
})

describe('handler module bundle', () => {
  it('compiles a TypeScript handler module once, and again when a file it imports changes', async () => {
    const dir = await mkdtemp(path.join(tmpdir(), 'handler-bundle-'))
    const src = await mkdtemp(path.join(tmpdir(), 'handler-src-'))
    try {
      const dep = path.join(src, 'dep.ts')
      const entry = path.join(src, 'handler.ts')
      await writeFile(dep, "export const word: string = 'one'\n")
      await writeFile(
        entry,
        "import { word } from './dep.ts'\nexport default { word, at: import.meta.url }\n",
      )
      const file = await buildHandlerBundle(entry, dir)
      const load = async () =>
        (
          (await import(`${pathToFileURL(file).href}?v=${Math.random()}`)) as {
            default: Record<string, string>
          }
        ).default
      expect(await load()).toEqual({ word: 'one', at: pathToFileURL(entry).href })
      const built = (await stat(file)).mtimeMs
      await sleep(20)
      expect(await buildHandlerBundle(entry, dir)).toBe(file)
      expect((await stat(file)).mtimeMs).toBe(built)
      await writeFile(dep, "export const word: string = 'two'\n")
      expect(await buildHandlerBundle(entry, dir)).toBe(file)
      expect((await load()).word).toBe('two')
    } finally {
      await rm(dir, { recursive: true, force: true })
      await rm(src, { recursive: true, force: true })
    }
  })

  it('lets a spare import the compiled copy, not the source through tsx', async () => {
    await prepareHandlerModules([MARKS], (err) => {
      throw err
    })
    const compiled = handlerModuleFile(MARKS)
    expect(compiled).not.toBe(MARKS)
    expect(compiled.endsWith('.mjs')).toBe(true)
  })
})

describe('spare pool', () => {
  it('SPARE_PROCESSES overrides slots + 1 and is checked with the rest of the configuration', () => {
    expect(sparesPerDevice(loadConfig({}).spareProcesses, 3)).toBe(4)
    expect(sparesPerDevice(loadConfig({ SPARE_PROCESSES: '2' }).spareProcesses, 3)).toBe(2)
    expect(sparesPerDevice(loadConfig({ SPARE_PROCESSES: '0' }).spareProcesses, 3)).toBe(0)
    expect(loadConfig({ SPARE_PROCESSES: '' }).spareProcesses).toBeUndefined()
    for (const bad of ['many', '-1', '65', '1.5', ' '])
      expect(() => loadConfig({ SPARE_PROCESSES: bad }), bad).toThrow(/SPARE_PROCESSES: must be an integer/)
  })

  it('keeps a burst of spares per device, compiled JS with the handler modules imported before ready', async () => {
    const pool = new SparePool({ logger, preload: [MARKS] })
    try {
      // Three slots on device 0, one on device 1.
      await pool.start(['0', '0', '0', '1'])
      expect(pool.target('0')).toBe(4)
      expect(pool.target('1')).toBe(2)
      expect(pool.take('2')).toBeUndefined()
      // A burst of three jobs on device 0 finds three distinct ready spares.
      const start = Date.now()
      const burst: ChildSpawn[] = []
      while (burst.length < 3 && Date.now() - start < 30_000) {
        const s = pool.take('0')
        if (s?.ready) burst.push(s)
        else if (s) {
          await untilReady([s])
          burst.push(s)
        } else await sleep(20)
      }
      expect(burst).toHaveLength(3)
      expect(new Set(burst.map((s) => s.pid)).size).toBe(3)
      for (const s of burst) {
        const argv = await cmdline(s.pid)
        expect(argv.join(' ')).not.toContain('tsx')
        expect(argv[1]).toMatch(new RegExp(`^${cache}/child-[0-9a-f]+\\.mjs$`))
        expect(existsSync(importedMarker(s.pid))).toBe(true)
        expect(await environ(s.pid)).toContain('CUDA_VISIBLE_DEVICES=0')
      }
      // Taken spares are replaced at once.
      expect(pool.count('0')).toBe(4)
      const one = pool.take('1')
      expect(one).toBeDefined()
      if (one) expect(await environ(one.pid)).toContain('CUDA_VISIBLE_DEVICES=1')

      // A job runs in a spare: the handler module it imported before ready, no tsx loaded.
      const spare = burst[0] as ChildSpawn
      const opts = fixtureJob('marks-import', {
        jobId: 'spare-1',
        root,
        artifacts: new DirectoryArtifactStore(path.join(root, 'out'), 'loras/spare-1'),
        timeoutMs: 30_000,
      })
      const proc = new JobProcess(
        {
          ...opts,
          cudaVisibleDevices: '0',
          job: { ...opts.job, params: { baseModel: 'sd15', datasetPath: 'ds' } },
        },
        spare,
      )
      const outcome = await proc.done
      expect(outcome).toMatchObject({ ok: true, pid: spare.pid, result: { pid: spare.pid, execArgv: [] } })
      for (const s of [...burst.slice(1), ...(one ? [one] : [])]) await s.discard()
      for (const s of [...burst, ...(one ? [one] : [])]) await rm(importedMarker(s.pid), { force: true })
    } finally {
      await pool.close()
    }
  }, 60_000)
})
