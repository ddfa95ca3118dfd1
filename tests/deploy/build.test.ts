import { randomUUID } from 'node:crypto'
import { existsSync } from 'node:fs'
import { readdir, readFile, rm } from 'node:fs/promises'
import path from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { repoRoot, run } from './helpers.ts'

// Builds into test-output/ (git-ignored, inside the repository so that the emitted JavaScript resolves the
// repository's node_modules and package.json "type": "module"), never into dist/.
const outDir = path.join(repoRoot, 'test-output', `build-${randomUUID()}`)

async function filesUnder(dir: string): Promise<string[]> {
  const entries = await readdir(dir, { withFileTypes: true, recursive: true })
  return entries.filter((e) => e.isFile()).map((e) => path.relative(dir, path.join(e.parentPath, e.name)))
}

describe('production build (scripts/build.mjs, tsconfig.build.json)', () => {
  let files: string[]

  beforeAll(async () => {
    const result = await run(process.execPath, ['scripts/build.mjs', '--out-dir', outDir], {
      timeoutMs: 240_000,
    })
    if (result.code !== 0)
      throw new Error(`build failed (${result.code}):\n${result.stdout}\n${result.stderr}`)
    files = await filesUnder(outDir)
  }, 240_000)

  afterAll(async () => {
    await rm(outDir, { recursive: true, force: true })
  })

  it('emits the entry points with the source layout kept', () => {
    for (const entry of ['gateway/main.js', 'gpu-host/main.js', 'gpu-host/child.js', 'schema/config.js']) {
      expect(files, entry).toContain(entry)
    }
  })

  it('copies the assets the code loads at run time', async () => {
    expect(files).toContain('schema/migrations/meta/_journal.json')
    const migrations = files.filter((f) => f.startsWith('schema/migrations/') && f.endsWith('.sql'))
    expect(migrations.length).toBeGreaterThan(0)
    if (existsSync(path.join(repoRoot, 'schema/workflows'))) {
      const sources = (await readdir(path.join(repoRoot, 'schema/workflows'))).filter((f) =>
        f.endsWith('.json'),
      )
      for (const f of sources) expect(files).toContain(`schema/workflows/${f}`)
    }
  })

  it('emits no tests, no TypeScript and no relative .ts import specifiers', async () => {
    expect(files.filter((f) => /\.test\.|^tests\/|^bench\//.test(f))).toEqual([])
    expect(files.filter((f) => f.endsWith('.ts'))).toEqual([])
    const offenders: string[] = []
    for (const f of files.filter((f) => f.endsWith('.js'))) {
      const js = await readFile(path.join(outDir, f), 'utf8')
      if (/(?:from\s*|import\s*\(\s*)['"]\.{1,2}\/[^'"]+\.ts['"]/.test(js)) offenders.push(f)
    }
    expect(offenders).toEqual([])
  })

  it('loads the whole module graph of each entry under plain node (no tsx)', async () => {
    // Without DATABASE_URL/S3_ENDPOINT the entries stop with exit 2 after their imports resolved (ESM links
    // the full static graph before any code runs), so a missing module or a bad specifier shows up here.
    const env = { PATH: process.env.PATH, HOME: process.env.HOME, LOG_LEVEL: 'silent' }
    for (const entry of ['gateway/main.js', 'gpu-host/main.js']) {
      const result = await run(process.execPath, [path.join(outDir, entry)], { env, timeoutMs: 30_000 })
      expect(result.stderr, entry).not.toMatch(/ERR_MODULE_NOT_FOUND|ERR_UNKNOWN_FILE_EXTENSION|SyntaxError/)
      expect(result.code, `${entry}: ${result.stderr}`).toBe(2)
      expect(result.stderr, entry).toMatch(/DATABASE_URL/)
    }
  })
})
