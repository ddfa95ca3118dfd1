#!/usr/bin/env node
// The `gpu-jobs` command (package.json "bin"). Runs on Node 20 with no build step: beside the compiled
// main.js (dist/gateway/cli/, where scripts/build.mjs copies this file) it imports that; in the source
// tree it registers tsx's ESM loader and imports main.ts.
import { existsSync } from 'node:fs'
import { fileURLToPath } from 'node:url'

const here = (name) => fileURLToPath(new URL(name, import.meta.url))

async function load() {
  if (existsSync(here('./main.js'))) return import('./main.js')
  const { register } = await import('tsx/esm/api')
  const tsconfig = here('../../tsconfig.json')
  register({ tsconfig: existsSync(tsconfig) ? tsconfig : false })
  return import('./main.ts')
}

const { run } = await load()
const controller = new AbortController()
process.once('SIGINT', () => {
  controller.abort()
  // A second Ctrl-C does not wait.
  process.once('SIGINT', () => process.exit(130))
})
// A closed pipe (`gpu-jobs follow x | head`) is not an error worth a stack trace.
process.stdout.on('error', (err) => {
  if (err.code === 'EPIPE') process.exit(0)
  throw err
})
process.exitCode = await run(process.argv.slice(2), {
  stdout: process.stdout,
  stderr: process.stderr,
  env: process.env,
  signal: controller.signal,
})
