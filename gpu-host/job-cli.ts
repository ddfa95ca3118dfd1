/**
 * `npm run job -- <type> --params '<json>' [--out DIR] [--timeout SEC]`: runs one job through the real
 * isolated runner (fresh child process, same IPC, same kill path) with no Redis, Postgres or S3. Progress
 * goes to stdout, artifacts to DIR. Exit code 0 on success, 1 on failure, 2 on bad usage.
 */
import { mkdir, rm } from 'node:fs/promises'
import path from 'node:path'
import { parseArgs } from 'node:util'
import * as v from 'valibot'
import { handlerFor } from '../functions/index.ts'
import { DirectoryArtifactStore } from '../functions/sdk/local-artifacts.ts'
import { loadConfig } from '../schema/config.ts'
import { withDefaultEngine } from '../schema/engines.ts'
import { JobType, outputPrefixFor } from '../schema/params/index.ts'
import { readGpuList, readGpus, slotsFor } from './gpus.ts'
import { JobProcess } from './runner.ts'

const usage =
  "usage: npm run job -- <train_lora|train_voice|render_video> --params '<json>' [--out DIR] [--timeout SEC] [--id JOB_ID]"
const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    params: { type: 'string', default: '{}' },
    out: { type: 'string' },
    timeout: { type: 'string' },
    id: { type: 'string' },
    help: { type: 'boolean', short: 'h' },
  },
})
const type = positionals[0]
if (values.help || !v.is(JobType, type)) {
  process.stderr.write(`${usage}\n`)
  process.exit(values.help ? 0 : 2)
}
let params: unknown
try {
  params = JSON.parse(values.params)
} catch {
  process.stderr.write(`--params must be JSON\n${usage}\n`)
  process.exit(2)
}
const config = loadConfig()
const handler = handlerFor(type)
const jobId = values.id ?? `local-${Date.now().toString(36)}`
const out = path.resolve(values.out ?? path.join('job-output', jobId))
await mkdir(out, { recursive: true })
// On a MIG GPU the first MIG instance: CUDA cannot use the whole GPU while MIG is on.
const slot = slotsFor(await readGpus(), 1, await readGpuList())[0]
const timeoutSec = values.timeout ? Number(values.timeout) : handler.timeoutSec
const started = Date.now()

const proc: JobProcess = new JobProcess({
  // DEFAULT_ENGINE_<TYPE> as on a host, for params that name no engine.
  job: { jobId, type, params: withDefaultEngine(type, params, config.defaultEngines), attempt: 1 },
  gpu: slot?.gpu ?? { index: null, uuid: null, name: null, vramTotalMb: null },
  cudaVisibleDevices: slot?.cudaVisibleDevices,
  paths: { scratch: path.join(out, '.scratch'), models: config.modelsDir, data: config.dataDir },
  engines: config.engines,
  artifacts: new DirectoryArtifactStore(out, outputPrefixFor(type, jobId)),
  timeoutMs: timeoutSec * 1000,
  killGraceMs: config.killGraceSec * 1000,
  onProgress: (pct, msg) => process.stdout.write(`[${pct.toFixed(1).padStart(5)}%] ${msg ?? ''}\n`),
  onLog: (level, msg) => process.stderr.write(`${level}: ${msg}\n`),
  onArtifact: (a) => process.stdout.write(`artifact ${a.path} ${a.size} bytes sha256=${a.sha256}\n`),
  onStarted: (ms) => process.stdout.write(`job process ${proc.pid} started in ${ms.toFixed(0)} ms\n`),
})
process.on('SIGINT', () => proc.abort('cancelled'))
const outcome = await proc.done
await rm(path.join(out, '.scratch'), { recursive: true, force: true })
const seconds = ((Date.now() - started) / 1000).toFixed(2)
if (outcome.ok) {
  process.stdout.write(
    `completed in ${seconds}s; artifacts in ${out}\nresult: ${JSON.stringify(outcome.result)}\n`,
  )
  process.exit(0)
}
process.stdout.write(`failed after ${seconds}s (${outcome.error.reason}): ${outcome.error.message}\n`)
if (outcome.error.stderrTail) process.stdout.write(`last stderr lines:\n${outcome.error.stderrTail}\n`)
process.exit(1)
