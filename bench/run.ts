/**
 * `npm run bench` runs every benchmark; `npm run bench -- <name>` runs one (startup, fanout, metrics, soak).
 * Each measures a baseline in the same run, prints a table and writes bench/results/<name>.json.
 * These are measurements, not tests: nothing here fails on a slow number.
 */
import path from 'node:path'
import { fanout } from './fanout.ts'
import { type BenchResult, machineInfo, writeResult } from './lib.ts'
import { metrics } from './metrics.ts'
import { soak } from './soak.ts'
import { startup } from './startup.ts'

const BENCHMARKS: Record<string, () => Promise<BenchResult>> = { startup, fanout, metrics, soak }

async function main(): Promise<void> {
  const wanted = process.argv.slice(2).filter((a) => !a.startsWith('-'))
  const unknown = wanted.filter((n) => !(n in BENCHMARKS))
  if (unknown.length > 0) {
    console.error(
      `unknown benchmark ${unknown.join(', ')}; choose from ${Object.keys(BENCHMARKS).join(', ')}`,
    )
    process.exit(2)
  }
  const names = wanted.length > 0 ? wanted : Object.keys(BENCHMARKS)
  console.log(`machine: ${JSON.stringify(machineInfo())}`)
  for (const name of names) {
    const started = performance.now()
    console.log(`\n=== ${name} ===`)
    const result = await BENCHMARKS[name]?.()
    if (!result) continue
    const file = await writeResult(result)
    console.log(
      `\n${name}: done in ${((performance.now() - started) / 1000).toFixed(1)} s; wrote ${path.relative(process.cwd(), file)}`,
    )
  }
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    console.error(err)
    process.exit(1)
  },
)
