/**
 * The job process's code as one compiled JavaScript file. From the source tree (`npm start`, `npm run
 * gpu-host`, tests) the child entry is TypeScript, and a process under the tsx loader takes about a second
 * to boot on a busy machine against about 120 ms for the same code bundled: a spare forked as the last
 * job ended would still be starting when the next one arrives. So the host bundles gpu-host/child.ts with
 * esbuild once, into a cache keyed by a hash of the sources and the lockfile, and forks that. A host that
 * runs from dist/ (compiled by scripts/build.mjs) already forks JavaScript and builds nothing.
 */
import { createHash } from 'node:crypto'
import { mkdir, readdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises'
import path from 'node:path'
import { fileURLToPath, pathToFileURL } from 'node:url'
import { JOB_CATALOG } from '../schema/params/catalog.ts'

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..')
const CHILD_SOURCE = path.join(ROOT, 'gpu-host', 'child.ts')
/** The folders whose TypeScript the child can reach; any change there makes a new bundle. */
const SOURCE_DIRS = ['gpu-host', 'functions', 'schema']
const LOCKFILE = path.join(ROOT, 'package-lock.json')
const STALE_MS = 7 * 24 * 3600 * 1000

/** Where bundles are kept: GPU_JOBS_CHILD_CACHE, else the usual build-cache place in node_modules. */
export const defaultCacheDir = (): string =>
  process.env.GPU_JOBS_CHILD_CACHE || path.join(ROOT, 'node_modules', '.cache', 'gpu-jobs')

async function tsFiles(dir: string, found: string[] = []): Promise<string[]> {
  for (const entry of await readdir(dir, { withFileTypes: true })) {
    const full = path.join(dir, entry.name)
    if (entry.isDirectory()) {
      if (entry.name !== 'node_modules' && !entry.name.startsWith('.')) await tsFiles(full, found)
    } else if (entry.name.endsWith('.ts') && !entry.name.endsWith('.test.ts')) found.push(full)
  }
  return found
}

/** sha256 of every source file the child may bundle (path and content), the lockfile and esbuild's version. */
export async function sourceHash(): Promise<string> {
  const { version } = await import('esbuild')
  const hash = createHash('sha256').update(`esbuild ${version}\n`)
  const files = (await Promise.all(SOURCE_DIRS.map((d) => tsFiles(path.join(ROOT, d))))).flat().sort()
  for (const file of [...files, LOCKFILE]) {
    hash.update(`${path.relative(ROOT, file)}\n`)
    hash.update(await readFile(file).catch(() => Buffer.alloc(0)))
  }
  return hash.digest('hex').slice(0, 16)
}

/**
 * functions/index.ts imports each catalogued handler with a template literal (`../${module}`), which
 * esbuild would turn into "every file of the repository". In the bundle it becomes a table of static
 * imports, one per catalog entry, so the handlers are compiled in and imported before 'ready'.
 */
// biome-ignore lint/suspicious/noTemplateCurlyInString: the source text searched for, not a template
const CATALOG_IMPORT = 'import(/* @vite-ignore */ `../${module}`)'

function catalogImports(): string {
  const rows = Object.values(JOB_CATALOG).map(
    (e) => `${JSON.stringify(e.handler)}: () => import(${JSON.stringify(`../${e.handler}`)})`,
  )
  return `const __catalogImport = (m) => ({ ${rows.join(', ')} })[m]();\n`
}

const sourcePlugin = {
  name: 'gpu-jobs-child-sources',
  setup(build: import('esbuild').PluginBuild): void {
    // tsx stays outside (its loader finds its own files), imported by absolute URL so that the bundle
    // works from any cache folder; the child loads it only for a `.ts` handler module.
    build.onResolve({ filter: /^tsx(\/|$)/ }, (args) => ({
      path: import.meta.resolve(args.path),
      external: true,
    }))
    build.onLoad({ filter: /\.ts$/ }, async (args) => {
      if (args.path.includes(`${path.sep}node_modules${path.sep}`)) return undefined
      let contents = await readFile(args.path, 'utf8')
      if (args.path === path.join(ROOT, 'functions', 'index.ts')) {
        if (!contents.includes(CATALOG_IMPORT))
          throw new Error(
            `functions/index.ts no longer imports handlers as ${CATALOG_IMPORT}: update child-bundle.ts`,
          )
        contents = catalogImports() + contents.replace(CATALOG_IMPORT, '__catalogImport(module)')
      }
      // Files next to a module (schema/workflows/*.json) are found from its own URL, not the bundle's.
      contents = contents.replaceAll('import.meta.url', JSON.stringify(pathToFileURL(args.path).href))
      return { contents, loader: 'ts' }
    })
  },
}

/** esbuild's options for a bundle the job process imports: one ESM file, packages inside. */
const bundleOptions: import('esbuild').BuildOptions = {
  bundle: true,
  platform: 'node',
  format: 'esm',
  target: 'node20',
  logLevel: 'silent',
  // Packages bundled in too (fewer files to resolve at start); their CommonJS parts need `require`.
  banner: {
    js: "import { createRequire as __createRequire } from 'node:module'; const require = __createRequire(import.meta.url);",
  },
  plugins: [sourcePlugin],
}

/** sha256 (16 hex digits) of files' paths and contents; a file that is gone counts as empty. */
async function filesHash(files: readonly string[]): Promise<string> {
  const hash = createHash('sha256')
  for (const file of files) {
    hash.update(`${file}\n`)
    hash.update(await readFile(file).catch(() => Buffer.alloc(0)))
  }
  return hash.digest('hex').slice(0, 16)
}

/**
 * A handler module given by path (the host's `handlerModules`: test fixtures, a custom handler) as one
 * compiled file, so that a spare imports JavaScript rather than loading tsx for it (about 230 ms of CPU
 * per job process against 60 ms for the child alone, measured on 2 cores). The module may import files
 * anywhere, so the cache is checked against the inputs esbuild reported when it built the bundle.
 */
export async function buildHandlerBundle(entry: string, dir = defaultCacheDir()): Promise<string> {
  const id = createHash('sha256').update(entry).digest('hex').slice(0, 16)
  const file = path.join(dir, `handler-${id}.mjs`)
  const inputsFile = `${file}.inputs.json`
  const known = (await readFile(inputsFile, 'utf8').then(JSON.parse, () => null)) as {
    inputs: string[]
    hash: string
  } | null
  const present = await stat(file).then(
    () => true,
    () => false,
  )
  if (known && present && known.hash === (await filesHash(known.inputs))) return file
  await mkdir(dir, { recursive: true })
  const esbuild = await import('esbuild')
  const tmp = `${file}.${process.pid}.tmp`
  const { metafile } = await esbuild.build({
    ...bundleOptions,
    entryPoints: [entry],
    outfile: tmp,
    metafile: true,
  })
  // Packages stand for themselves through the lockfile (cheaper than hashing their files at each start).
  const inputs = [
    ...Object.keys(metafile?.inputs ?? {})
      .map((p) => path.resolve(p))
      .filter((p) => !p.includes(`${path.sep}node_modules${path.sep}`)),
    LOCKFILE,
  ].sort()
  await rename(tmp, file)
  const inputsTmp = `${inputsFile}.${process.pid}.tmp`
  await writeFile(inputsTmp, JSON.stringify({ inputs, hash: await filesHash(inputs) }))
  await rename(inputsTmp, inputsFile)
  return file
}

/** Bundles the child into `dir` (unless a bundle of the same sources is there) and returns its path. */
export async function buildChildBundle(
  dir = defaultCacheDir(),
): Promise<{ file: string; built: boolean; ms: number }> {
  const started = performance.now()
  const hash = await sourceHash()
  const file = path.join(dir, `child-${hash}.mjs`)
  const names = await readdir(dir).catch(() => [] as string[])
  if (names.includes(path.basename(file))) return { file, built: false, ms: performance.now() - started }
  await mkdir(dir, { recursive: true })
  const esbuild = await import('esbuild')
  // Written beside, then renamed: a host forking meanwhile (or a second host) never sees half a file.
  const tmp = `${file}.${process.pid}.tmp`
  await esbuild.build({ ...bundleOptions, entryPoints: [CHILD_SOURCE], outfile: tmp })
  await rename(tmp, file)
  // Bundles of other sources untouched for a week go; a newer one may belong to another checkout or
  // host sharing the cache, still forking it.
  const weekAgo = Date.now() - STALE_MS
  for (const name of names.filter((n) => /^child-[0-9a-f]+\.mjs$/.test(n))) {
    const old = path.join(dir, name)
    const info = await stat(old).catch(() => undefined)
    if (info && info.mtimeMs < weekAgo) await rm(old, { force: true })
  }
  return { file, built: true, ms: performance.now() - started }
}
