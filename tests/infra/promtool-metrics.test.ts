/**
 * Lints what the running services really expose: the GPU host's and the gateway's `/metrics`, scraped from
 * a whole stack after real jobs, piped into `promtool check metrics`.
 *
 * promtool exits 0 (clean), 3 (lint problems) or 1 (the exposition does not parse). prom-client's default
 * `nodejs_active_{handles,requests,resources}_total` are gauges with a `_total` suffix, so exit 3 is
 * accepted only when every reported problem is about a prom-client default `nodejs_*` metric; any problem
 * with our own `gpu_worker_*` or `gateway_*` metrics fails.
 */
import { execFileSync, spawn } from 'node:child_process'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { type Stack, startStack, waitFor } from '../helpers/stack.ts'

/** Path to promtool; Debian/Ubuntu: `apt-get install prometheus`. */
const PROMTOOL = process.env.PROMTOOL ?? 'promtool'

function promtoolVersion(): string | undefined {
  try {
    return execFileSync(PROMTOOL, ['--version'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] })
      .split('\n')[0]
      ?.trim()
  } catch {
    return undefined
  }
}

const version = promtoolVersion()
const SKIP_REASON = `skipped: "${PROMTOOL}" not found (apt-get install prometheus, or set PROMTOOL)`
if (!version) console.warn(`promtool check metrics tests ${SKIP_REASON}`)

/** `promtool check metrics` with the exposition on stdin. */
function checkMetrics(text: string): Promise<{ code: number | null; output: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(PROMTOOL, ['check', 'metrics'], { stdio: ['pipe', 'pipe', 'pipe'] })
    let output = ''
    child.stdout.on('data', (chunk: Buffer) => {
      output += chunk.toString()
    })
    child.stderr.on('data', (chunk: Buffer) => {
      output += chunk.toString()
    })
    child.on('error', reject)
    child.on('close', (code) => resolve({ code, output }))
    child.stdin.end(text)
  })
}

/** promtool prints one problem a line: `<metric name> <problem>`. */
function problems(output: string): { metric: string; line: string }[] {
  return output
    .split('\n')
    .map((line) => line.trim())
    .filter((line) => line !== '')
    .map((line) => ({ metric: line.split(/\s/)[0] ?? '', line }))
}

/** prom-client's default metrics (collectDefaultMetrics) that promtool is known to lint. */
const isPromClientDefault = (metric: string) => metric.startsWith('nodejs_')

/** Fails unless promtool parsed the exposition and every lint problem is a prom-client default's. */
function expectOnlyDefaultMetricWarnings(result: { code: number | null; output: string }, ours: RegExp) {
  expect([0, 3], `promtool exit ${result.code}: ${result.output}`).toContain(result.code)
  const found = problems(result.output)
  const foreign = found.filter((p) => !isPromClientDefault(p.metric))
  expect(foreign.map((p) => p.line)).toEqual([])
  if (result.code === 3) expect(found.length, result.output).toBeGreaterThan(0)
  // Our own metrics must be linted, not skipped: nothing of ours may appear among the problems.
  expect(found.filter((p) => ours.test(p.metric)).map((p) => p.line)).toEqual([])
}

describe.skipIf(!version)(`promtool check metrics on live /metrics (${version ?? SKIP_REASON})`, () => {
  let stack: Stack | undefined
  let hostMetrics = ''
  let gatewayMetrics = ''

  beforeAll(async () => {
    stack = await startStack({ env: { SIMULATE_STEP_MS: '5', GPU_SLOTS: '1' } })
    const s = stack
    const jobs = [
      { type: 'train_lora', params: { baseModel: 'sd15', datasetPath: 'ds', epochs: 1, rank: 4 } },
      // Non-retryable: the dataset folder exists but holds nothing (fills the error/failed series).
      { type: 'train_voice', params: { speakerName: 'ann', datasetPath: 'empty', epochs: 1 } },
    ]
    const ids: string[] = []
    for (const job of jobs) {
      const { status, json } = await s.post(job)
      expect(status).toBe(202)
      ids.push(json.jobId as string)
    }
    for (const id of ids)
      await waitFor(
        async () => {
          const body = (await (await fetch(s.url(`/api/status/${id}`))).json()) as { status: string }
          return ['completed', 'failed', 'cancelled'].includes(body.status)
        },
        30_000,
        `job ${id} to finish`,
      )
    hostMetrics = await (await fetch(`http://127.0.0.1:${s.hostPort}/metrics`)).text()
    gatewayMetrics = await (await fetch(s.url('/metrics'))).text()
  }, 60_000)

  afterAll(async () => {
    await stack?.close()
  })

  it('GPU host: only prom-client default metrics draw lint warnings', async () => {
    expect(hostMetrics).toMatch(/^gpu_worker_jobs_total\{type="train_lora",status="completed"\} 1$/m)
    expect(hostMetrics).toMatch(/^gpu_worker_job_duration_seconds_bucket\{/m)
    // Zero-initialised, so its first increase shows: jobs the queue lost (gpu-host/reconciler.ts).
    expect(hostMetrics).toMatch(
      /^gpu_worker_jobs_reconciled_total\{type="train_lora",action="requeued"\} 0$/m,
    )
    expect(hostMetrics).toMatch(
      /^gpu_worker_jobs_reconciled_total\{type="render_video",action="failed"\} 0$/m,
    )
    expectOnlyDefaultMetricWarnings(await checkMetrics(hostMetrics), /^gpu_worker_/)
  })

  it('gateway: only prom-client default metrics draw lint warnings', async () => {
    expect(gatewayMetrics).toMatch(/^gateway_http_request_duration_seconds_bucket\{/m)
    expect(gatewayMetrics).toMatch(/^gateway_jobs_submitted_total\{type="train_lora"\} 1$/m)
    expectOnlyDefaultMetricWarnings(await checkMetrics(gatewayMetrics), /^gateway_/)
  })

  it('fails on a lint problem in our own metrics (the check is not a no-op)', async () => {
    const bad = `${hostMetrics}# HELP gpu_worker_bad_total A gauge that ends in _total.\n# TYPE gpu_worker_bad_total gauge\ngpu_worker_bad_total 1\n`
    const result = await checkMetrics(bad)
    expect(result.code).toBe(3)
    expect(problems(result.output).some((p) => p.metric === 'gpu_worker_bad_total')).toBe(true)
  })
})
