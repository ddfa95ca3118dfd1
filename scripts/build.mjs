#!/usr/bin/env node
// Production build: `tsc -p tsconfig.build.json` emits JavaScript to dist/ with the source layout kept
// (dist/gateway/main.js, dist/gpu-host/main.js, dist/gpu-host/child.js, ...), then the files the code
// loads at run time relative to its own file are copied beside the emitted JavaScript:
//   schema/migrations/**                     -> dist/schema/migrations/**   (required)
//   schema/workflows/*.json                  -> dist/schema/workflows/
// plus any other non-TypeScript file under the source folders (web console assets and the like), so a
// new asset does not need a change here. Tests and fixtures are never copied.
//
// Usage: node scripts/build.mjs [--no-clean] [--out-dir DIR]
//   --out-dir DIR  emit somewhere else than dist/ (tests build into test-output/ so they never touch dist/)
// Plain Node ESM, no dependencies beyond the project's own TypeScript.

import { spawn } from 'node:child_process'
import { existsSync } from 'node:fs'
import { cp, mkdir, readdir, rm } from 'node:fs/promises'
import { createRequire } from 'node:module'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..')
const outDirArg = process.argv.indexOf('--out-dir')
const outDir =
  outDirArg > 0 && process.argv[outDirArg + 1]
    ? path.resolve(process.argv[outDirArg + 1])
    : path.join(root, 'dist')
const sourceRoots = ['schema', 'functions', 'gateway', 'gpu-host', 'bin']
/** Assets that must be present in dist/ after the build (when their source exists). */
const requiredAssets = [
  { from: 'schema/migrations', required: true },
  { from: 'schema/workflows', required: false },
]
const skipDirs = new Set(['node_modules', 'fixtures', '__fixtures__', '__snapshots__', 'test-output', 'data'])

function isAsset(name) {
  if (name.endsWith('.ts') || name.endsWith('.tsx') || name.endsWith('.mts') || name.endsWith('.cts'))
    return false
  if (/\.(test|spec)\.[cm]?[jt]s$/.test(name)) return false
  return !name.startsWith('.')
}

async function collectAssets(dir, found = []) {
  let entries
  try {
    entries = await readdir(dir, { withFileTypes: true })
  } catch (err) {
    if (err.code === 'ENOENT') return found
    throw err
  }
  for (const entry of entries) {
    const full = path.join(dir, entry.name)
    if (entry.isDirectory()) {
      if (!skipDirs.has(entry.name) && !entry.name.startsWith('.')) await collectAssets(full, found)
    } else if (entry.isFile() && isAsset(entry.name)) {
      found.push(full)
    }
  }
  return found
}

function runTsc() {
  const require = createRequire(import.meta.url)
  const tsc = require.resolve('typescript/bin/tsc')
  return new Promise((resolve, reject) => {
    const child = spawn(
      process.execPath,
      [tsc, '-p', path.join(root, 'tsconfig.build.json'), '--outDir', outDir],
      {
        cwd: root,
        stdio: 'inherit',
      },
    )
    child.on('error', reject)
    child.on('exit', (code, signal) => resolve(signal ? 1 : (code ?? 1)))
  })
}

async function main() {
  const started = Date.now()
  if (!process.argv.includes('--no-clean')) await rm(outDir, { recursive: true, force: true })

  const code = await runTsc()
  if (code !== 0) {
    console.error(`build: tsc failed (exit ${code}); ${path.relative(root, outDir) || outDir} is incomplete`)
    process.exit(code)
  }

  let copied = 0
  for (const sourceRoot of sourceRoots) {
    for (const file of await collectAssets(path.join(root, sourceRoot))) {
      const target = path.join(outDir, path.relative(root, file))
      await mkdir(path.dirname(target), { recursive: true })
      await cp(file, target, { force: true, preserveTimestamps: true })
      copied++
    }
  }

  for (const asset of requiredAssets) {
    const source = path.join(root, asset.from)
    if (!existsSync(source)) {
      if (asset.required) {
        console.error(`build: ${asset.from} is missing`)
        process.exit(1)
      }
      console.warn(`build: ${asset.from} not found, nothing copied for it`)
      continue
    }
    if (!existsSync(path.join(outDir, asset.from))) {
      console.error(`build: ${asset.from} was not copied to ${outDir}`)
      process.exit(1)
    }
  }

  const entries = ['gateway/main.js', 'gpu-host/main.js', 'gpu-host/child.js']
  const missing = entries.filter((entry) => !existsSync(path.join(outDir, entry)))
  if (missing.length > 0) {
    console.error(`build: entry points missing: ${missing.join(', ')}`)
    process.exit(1)
  }

  const seconds = ((Date.now() - started) / 1000).toFixed(1)
  console.log(
    `build: ${path.relative(root, outDir) || outDir}/ ready (${copied} asset files copied) in ${seconds}s`,
  )
}

main().catch((err) => {
  console.error(err)
  process.exit(1)
})
