/**
 * `npm run bench` runs every benchmark; `npm run bench -- <name>` runs one (startup, fanout, metrics, soak,
 * throughput, artifacts, submission, scale, packing). `--quick` runs each with tiny sizes (CI: under ~90 s on 2
 * cores) and writes bench/results/<name>-quick.json, so the committed full results stay.
 * Each measures a baseline in the same run, prints a table and writes bench/results/<name>.json.
 * These are measurements, not tests: nothing here fails on a slow number.
 */
import path from 'node:path'
import { type BenchResult, machineInfo, writeResult } from './lib.ts'

/** A benchmark; `null` when it does not run in this mode (it prints why). */
type Benchmark = (opts: { quick: boolean }) => Promise<BenchResult | null>

/**
 * Imported lazily: the older benchmarks read their sizes from the environment at import time, which
 * `--quick` sets first (QUICK_ENV).
 */
const BENCHMARKS: Record<string, Benchmark> = {
  startup: async () => (await import('./startup.ts')).startup(),
  fanout: async () => (await import('./fanout.ts')).fanout(),
  metrics: async () => (await import('./metrics.ts')).metrics(),
  soak: async ({ quick }) => {
    if (!quick) return (await import('./soak.ts')).soak()
    // Its schedule (two host kills 8 s apart, ~14 s recovery each) has no tiny size.
    console.log('soak: skipped under --quick (two host kills and their recoveries take about 3 minutes)')
    return null
  },
  throughput: async (o) => (await import('./throughput.ts')).throughput(o),
  artifacts: async (o) => (await import('./artifacts.ts')).artifacts(o),
  submission: async (o) => (await import('./submission.ts')).submission(o),
  scale: async (o) => (await import('./scale.ts')).scale(o),
  packing: async (o) => (await import('./packing.ts')).packing(o),
}

/** The older benchmarks' knobs at tiny sizes (an explicit environment value wins). */
const QUICK_ENV: Record<string, string> = {
  BENCH_STARTUP_JOBS: '5',
  BENCH_STARTUP_GAP_MS: '0',
  BENCH_FANOUT_SECONDS: '2',
  BENCH_STATUS_SECONDS: '1',
  BENCH_METRICS_RENDERS: '100',
}

async function main(): Promise<void> {
  const args = process.argv.slice(2)
  const quick = args.includes('--quick')
  const wanted = args.filter((a) => !a.startsWith('-'))
  const unknown = wanted.filter((n) => !(n in BENCHMARKS))
  if (unknown.length > 0) {
    console.error(
      `unknown benchmark ${unknown.join(', ')}; choose from ${Object.keys(BENCHMARKS).join(', ')}`,
    )
    process.exit(2)
  }
  if (quick) for (const [k, v] of Object.entries(QUICK_ENV)) process.env[k] ??= v
  // The AWS SDK warns once per process about Node 20 (forkTs and the host's job processes silence it too).
  process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true'
  const names = wanted.length > 0 ? wanted : Object.keys(BENCHMARKS)
  console.log(
    `machine: ${JSON.stringify(machineInfo())}${quick ? ' (quick: tiny sizes, no speed claims)' : ''}`,
  )
  const suiteStarted = performance.now()
  for (const name of names) {
    const started = performance.now()
    console.log(`\n=== ${name} ===`)
    const result = await BENCHMARKS[name]?.({ quick })
    if (!result) continue
    const file = await writeResult(quick ? { ...result, name: `${result.name}-quick` } : result)
    console.log(
      `\n${name}: done in ${((performance.now() - started) / 1000).toFixed(1)} s; wrote ${path.relative(process.cwd(), file)}`,
    )
  }
  console.log(`\nall done in ${((performance.now() - suiteStarted) / 1000).toFixed(1)} s`)
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    console.error(err)
    process.exit(1)
  },
)
