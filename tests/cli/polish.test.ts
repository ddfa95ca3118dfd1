/**
 * The CLI as a user meets it, run as the real bin (`node gateway/cli/gpu-jobs.mjs`, a child process, its
 * output a pipe) against real stacks: each kind of error said once; percentages by the one rule
 * (percentText); aligned columns in a pipe; how a followed job ended (duration, artifacts); Ctrl-C.
 */
import { spawn } from 'node:child_process'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { bytes, duration, statusSummary } from '../../gateway/cli/render.ts'
import { attemptText, percentText, shortJobId } from '../../gateway/console/stream.js'
import type { JobStatusBody, JobSummary } from '../../schema/api.ts'
import type { ProgressEvent } from '../../schema/events.ts'
import { addFixtureJob, FIXTURE_DISPATCH, type Stack, startStack, waitFor } from '../helpers/stack.ts'
import { TEST_REDIS_URL } from '../helpers/stores.ts'
import { startTcpProxy, type TcpProxy } from '../helpers/tcp-proxy.ts'

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..')
const bin = path.join(root, 'gateway/cli/gpu-jobs.mjs')

interface Ran {
  code: number | null
  stdout: string
  stderr: string
}

/**
 * Starts the bin; `done` resolves when it exits. `until`: once stdout passes it, SIGINT is sent (Ctrl-C).
 */
function gpuJobs(args: string[], env: Record<string, string>, until?: (stdout: string) => boolean) {
  const child = spawn(process.execPath, [bin, ...args], {
    cwd: root,
    env: { ...process.env, GPU_JOBS_TOKEN: '', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  const ran: Ran = { code: null, stdout: '', stderr: '' }
  let interrupted = false
  child.stdout.on('data', (chunk: Buffer) => {
    ran.stdout += chunk
    if (until && !interrupted && until(ran.stdout)) {
      interrupted = true
      child.kill('SIGINT')
    }
  })
  child.stderr.on('data', (chunk: Buffer) => {
    ran.stderr += chunk
  })
  const killer = setTimeout(() => child.kill('SIGKILL'), 45_000)
  const done = new Promise<Ran>((resolve) =>
    child.on('close', (code) => {
      clearTimeout(killer)
      resolve({ ...ran, code })
    }),
  )
  return done
}

const lines = (text: string) => text.split('\n').filter((l) => l !== '')
const count = (text: string, part: string) => text.split(part).length - 1

/** That `text` is said once: one `error:` line, and no line twice. */
function expectSaidOnce(r: Ran, message: string) {
  expect(r.code, r.stderr).toBe(3)
  expect(r.stdout).toBe('')
  expect(r.stderr.match(/^error:/gm), r.stderr).toHaveLength(1)
  expect(count(r.stderr, message), r.stderr).toBe(1)
  expect(new Set(lines(r.stderr)).size).toBe(lines(r.stderr).length)
}

/**
 * That every row of `block` has a column break where each of the header's `left` names starts, and a cell
 * that ends where each of its `right` (right-aligned) names ends.
 */
function expectColumns(block: string, left: string[], right: string[] = []) {
  const [head = '', ...rows] = lines(block)
  expect(rows.length, block).toBeGreaterThan(0)
  for (const name of [...left, ...right]) expect(head.indexOf(name), `${name} in ${head}`).toBeGreaterThan(0)
  for (const row of rows) {
    for (const name of left) {
      const at = head.indexOf(name)
      // An empty last cell (a job with no message yet): the line ends before the column, trimmed.
      if (row.length <= at && row.trimEnd() === row) continue
      expect(`${row.slice(at - 2, at)}|${row[at] === ' ' ? ' ' : 'x'}`, `${row} / ${name}`).toBe('  |x')
    }
    for (const name of right) {
      const end = head.indexOf(name) + name.length
      expect(`${row[end - 1] === ' ' ? ' ' : 'x'}|${row[end] ?? ' '}`, `${row} / ${name}`).toBe('x| ')
    }
  }
}

let stack: Stack
let env: Record<string, string>
const voice = (epochs: number) => ['-p', 'speakerName=ann', '-p', 'datasetPath=ds', '-p', `epochs=${epochs}`]

beforeAll(async () => {
  // train_lora runs the fixtures (prints-logs); the CLI submits train_voice and render_video.
  // Beats every 100 ms: `gpu-jobs hosts` shows a job soon after it starts.
  stack = await startStack({ handlerModules: { train_lora: FIXTURE_DISPATCH }, heartbeatMs: 100 })
  env = { GPU_JOBS_URL: stack.gateway.url }
})
afterAll(async () => {
  await stack?.close()
})

describe('percentages: one rule (console and CLI)', () => {
  it('is a whole percent rounded down, 100% only for a completed job', async () => {
    expect(percentText(3.333, 'running')).toBe('3%')
    expect(percentText(99.99, 'running')).toBe('99%')
    expect(percentText(100, 'running')).toBe('99%')
    expect(percentText(100, 'failed')).toBe('99%')
    expect(percentText(100, 'completed')).toBe('100%')
    expect(percentText(-2, 'queued')).toBe('0%')
    // Not a job's (a GPU's utilisation): up to 100%.
    expect(percentText(100)).toBe('100%')
    expect(percentText(87.9)).toBe('87%')
    // The console's pctText is this very function (a path in a variable: format.js has no types).
    const format = '../../gateway/console/format.js'
    expect(((await import(format)) as { pctText: unknown }).pctText).toBe(percentText)
  })

  it('follow, status and list write each event and job by it', async () => {
    // 150 epochs: 1,500 steps of 0.067% (5 ms each); a JSON and a line follower of one job, matched by seq.
    const id = lines((await gpuJobs(['submit', 'train_voice', ...voice(150)], env)).stdout)[0] ?? ''
    const [json, text] = await Promise.all([
      gpuJobs(['follow', id, '--json'], env),
      gpuJobs(['follow', id], env),
    ])
    expect([json.code, text.code]).toEqual([0, 0])
    const events = new Map(
      lines(json.stdout)
        .map((l) => JSON.parse(l) as ProgressEvent)
        .map((e) => [e.seq, e]),
    )
    // Each joined at the job's state of the moment: compared from the later one's first event on.
    const since = Math.min(...events.keys())
    const shown = lines(text.stdout)
    expect(shown.length).toBeGreaterThan(20)
    for (const l of shown) {
      const m = l.match(/^\S+ {2}#(\d+) +(\w+) +(\d+%)( |$)/)
      expect(m, l).not.toBeNull()
      if (Number(m?.[1]) < since) continue
      const e = events.get(Number(m?.[1]))
      expect(e, l).toBeDefined()
      expect(m?.[3], l).toBe(percentText(e?.progress ?? Number.NaN, e?.status))
      expect(m?.[3] === '100%', l).toBe(e?.status === 'completed')
    }
    expect([...events.values()].some((e) => !Number.isInteger(e.progress))).toBe(true)

    const status = await gpuJobs(['status', id], env)
    expect(status.stdout).toMatch(/^status +completed {2}100%$/m)
    const listed = lines((await gpuJobs(['list', '--type', 'train_voice', '--limit', '5'], env)).stdout)
    expect(listed.find((l) => l.startsWith(id))).toMatch(/ completed +100% /)
  })
})

describe('attempts: one rule (console and CLI)', () => {
  it('"n of max" only while another attempt may come', () => {
    const at = (attempt: number, maxAttempts: number, status: string) =>
      attemptText({ attempt, maxAttempts, status })
    expect(at(1, 3, 'running')).toBe('1 of 3')
    expect(at(2, 3, 'retrying')).toBe('2 of 3')
    expect(at(0, 3, 'queued')).toBe('not started (up to 3)')
    expect(at(1, 3, 'completed')).toBe('1 attempt')
    expect(at(2, 3, 'completed')).toBe('2 attempts')
    expect(at(1, 3, 'failed')).toBe('1')
    expect(at(3, 3, 'failed')).toBe('3 of 3')
    expect(at(0, 3, 'cancelled')).toBe('none (it never started)')
    // Attempts a shutdown interrupted are not counted against maxAttempts; other interruptions are.
    const shutdown = { outcome: 'interrupted', reason: 'shutdown' }
    const crash = { outcome: 'interrupted', reason: 'crash' }
    expect(
      attemptText({ attempt: 3, maxAttempts: 1, status: 'running', attempts: [shutdown, shutdown] }),
    ).toBe('3 of 3')
    expect(attemptText({ attempt: 2, maxAttempts: 2, status: 'running', attempts: [crash] })).toBe('2 of 2')
  })
})

describe('gpu-jobs status: how long it ran', () => {
  const t0 = Date.parse('2026-12-08T01:00:00.000Z')
  const at = (s: number) => new Date(t0 + s * 1000).toISOString()
  const attempt = (n: number, from: number, to: number | null) => ({
    attempt: n,
    hostId: 'host-a',
    pid: 100 + n,
    startedAt: at(from),
    finishedAt: to === null ? null : at(to),
    outcome: to === null ? null : n === 1 ? 'retrying' : 'completed',
    reason: n === 1 ? 'timeout' : null,
    message: null,
  })
  const job = (over: Partial<JobStatusBody>) =>
    ({
      jobId: 'j-1',
      type: 'train_lora',
      status: 'completed',
      progress: 100,
      message: 'done',
      attempt: 2,
      maxAttempts: 2,
      createdAt: at(0),
      startedAt: at(0),
      finishedAt: at(120),
      nextAttemptAt: null,
      params: {},
      error: null,
      result: null,
      artifacts: [],
      attempts: [],
      ...over,
    }) as JobStatusBody
  const ranFor = (body: JobStatusBody, now: number) =>
    statusSummary(body, new URL('http://127.0.0.1:8080'), t0 + now * 1000)
      .split('\n')
      .find((l) => l.startsWith('ran for'))

  it("is its attempts' own time, the backoff between them apart", () => {
    // 3.1 s, a 115 s backoff, then 1.5 s.
    const done = job({ attempts: [attempt(1, 0, 3.1), attempt(2, 118.5, 120)] } as Partial<JobStatusBody>)
    expect(ranFor(done, 200)).toBe('ran for   5s (2m 0s since it first started)')
    // Retrying after a 1 s attempt, 8 s on: 1 s ran.
    const retrying = job({
      status: 'retrying',
      attempt: 1,
      finishedAt: null,
      attempts: [attempt(1, 0, 1)],
    } as Partial<JobStatusBody>)
    expect(ranFor(retrying, 8)).toBe('ran for   1s (8s since it first started)')
    // One attempt, no wait: the one number.
    expect(
      ranFor(job({ finishedAt: at(3), attempts: [attempt(2, 0, 3)] } as Partial<JobStatusBody>), 9),
    ).toBe('ran for   3s')
  })
})

describe('an error is said once', () => {
  it('bad usage, 400, 404, an unreachable gateway', async () => {
    expectSaidOnce(await gpuJobs(['submit'], env), 'missing the job type')
    expectSaidOnce(await gpuJobs(['logs', 'x', '--attempt', '0'], env), '--attempt must be')
    for (const cmd of ['status', 'logs', 'cancel', 'rerun', 'retry', 'follow'])
      expectSaidOnce(await gpuJobs([cmd, ''], env), 'missing the job id')
    expectSaidOnce(
      await gpuJobs(['logs', 'x', '--attempt', '99999999999'], env),
      '--attempt must be a whole number from 1 to 999999999, got "99999999999"',
    )
    const one = await gpuJobs(
      ['submit', 'train_voice', '-p', 'speakerName=ann', '-p', 'datasetPath=ds', '-p', 'epochs=many'],
      env,
    )
    expectSaidOnce(one, 'must be number')
    expect(one.stderr).toBe('error: invalid_params: params.epochs must be number\n')
    const two = await gpuJobs(['submit', 'train_voice', '-p', 'epochs=many', '-p', 'colour=red'], env)
    expect(two.stderr.match(/^error:/gm)).toHaveLength(1)
    expect(count(two.stderr, 'params.epochs')).toBe(1)
    expect(count(two.stderr, 'params.colour')).toBe(1)
    for (const cmd of ['status', 'follow', 'logs', 'rerun'])
      expectSaidOnce(await gpuJobs([cmd, 'no-such-job-7'], env), 'no job "no-such-job-7"')
    // A job cancelled before any attempt: its logs say it made none (not only "attempt 1: 0 lines").
    await stack.insertJob('never-ran-cli-1', 'cancelled')
    const none = await gpuJobs(['logs', 'never-ran-cli-1'], env)
    expect([none.stdout, none.stderr]).toEqual(['', 'attempt 1: 0 lines (the job has made no attempt)\n'])
    expectSaidOnce(
      await gpuJobs(['follow', 'x-1'], { GPU_JOBS_URL: 'http://127.0.0.1:1' }),
      'cannot reach the gateway',
    )
  })

  describe('401 and 503', () => {
    let authed: Stack
    let proxy: TcpProxy
    let cut: Stack
    beforeAll(async () => {
      authed = await startStack({ env: { API_TOKENS: 'alice:alice-token-0000001' }, withHost: false })
      const redis = new URL(TEST_REDIS_URL)
      proxy = await startTcpProxy(Number(redis.port || 6379), redis.hostname)
      cut = await startStack({ withHost: false, redisUrl: `redis://127.0.0.1:${proxy.port}` })
    })
    afterAll(async () => {
      await authed?.close()
      await proxy?.restore().catch(() => {})
      await cut?.close()
      await proxy?.close()
    })

    it('a missing or wrong token: one line that says what to set', async () => {
      const u = { GPU_JOBS_URL: authed.gateway.url }
      const none = await gpuJobs(['list'], u)
      expectSaidOnce(none, 'GPU_JOBS_TOKEN')
      expect(none.stderr).toBe('error: unauthorized: the gateway asks for an API token: set GPU_JOBS_TOKEN\n')
      const wrong = await gpuJobs(['follow', 'x-1'], { ...u, GPU_JOBS_TOKEN: 'wrong-token-0000000001' })
      expectSaidOnce(wrong, 'GPU_JOBS_TOKEN is not a valid API token')
    })

    it('a backend down: the 503 naming it', async () => {
      await proxy.cut()
      const r = await gpuJobs(['submit', 'train_voice', ...voice(1)], { GPU_JOBS_URL: cut.gateway.url })
      expectSaidOnce(r, 'Redis is unavailable')
      expect(r.stderr).toMatch(/^error: backend_unavailable: Redis is unavailable/)
    })
  })
})

describe('in a pipe', () => {
  it('list, hosts, queue and logs print aligned columns', async () => {
    // Jobs whose cells differ in width: statuses, percentages, messages.
    const fx = await addFixtureJob(
      stack,
      'prints-logs',
      { maxAttempts: 1 },
      { lines: 12, succeedOnAttempt: 1 },
    )
    await gpuJobs(['submit', 'render_video', '-p', 'frames=3', '-p', 'width=64', '-p', 'height=48'], env)
    const slow = lines((await gpuJobs(['submit', 'train_voice', ...voice(1000)], env)).stdout)[0] ?? ''
    await stack.waitStatus(fx)
    await stack.waitJob(slow, (j) => j.progress > 0, 20_000, 'progress')

    try {
      const list = await gpuJobs(['list', '--limit', '50'], env)
      expect(list.code).toBe(0)
      // PROGRESS and CREATED right-aligned.
      expectColumns(list.stdout, ['TYPE', 'STATUS', 'MESSAGE'], ['PROGRESS', 'CREATED'])
      expect(lines(list.stdout).length).toBeGreaterThan(3)

      const hosts = await gpuJobs(['hosts'], env)
      const blocks = hosts.stdout.trimEnd().split('\n\n')
      const fleet = blocks.find((b) => b.startsWith('HOST  ') && b.includes(' ENGINES')) ?? ''
      const running = blocks.find((b) => b.startsWith('HOST  ') && b.includes(' ATTEMPT')) ?? ''
      expectColumns(fleet, ['STATUS', 'VERSION', 'SLOTS', 'ENGINES'], ['UP', 'SEEN', 'JOBS'])
      expectColumns(running, ['JOB', 'TYPE'], ['ATTEMPT', 'PROGRESS', 'SLOT', 'RUNNING'])
      const queue = await gpuJobs(['queue'], env)
      const [states = '', types = ''] = queue.stdout.split('\n\n')
      expectColumns(states, [], ['JOBS'])
      expectColumns(types, [], ['QUEUED', 'RUNNING', 'RETRYING'])

      const logs = lines((await gpuJobs(['logs', fx], env)).stdout)
      expect(logs.length).toBeGreaterThan(12)
      // `HH:MM:SS.mmm stream text`: the text starts at one column whatever the stream.
      for (const l of logs) expect(l, l).toMatch(/^\d\d:\d\d:\d\d\.\d{3} (stdout|stderr|log {3}) \S/)
    } finally {
      await gpuJobs(['cancel', slow], env)
    }

    // The events of follow: the status column stays put from #9 to #10 and on.
    const events = lines((await gpuJobs(['follow', fx], env)).stdout)
    const byVideo = lines(
      (
        await gpuJobs(
          ['submit', 'render_video', '-p', 'frames=12', '-p', 'width=64', '-p', 'height=48', '--follow'],
          env,
        )
      ).stdout,
    ).slice(1)
    expect(byVideo.some((l) => / {2}#1\d /.test(l))).toBe(true)
    const at = new Set([...events, ...byVideo].map((l) => l.search(/(queued|running|completed|failed) /)))
    expect([...at]).toHaveLength(1)
  })
})

describe('follow', () => {
  it('ends with how the job went: its duration and its artifacts', async () => {
    const r = await gpuJobs(['submit', 'train_voice', ...voice(1), '--follow'], env)
    expect(r.code).toBe(0)
    const id = lines(r.stdout)[0] ?? ''
    const job = (await (await fetch(stack.url(`/api/jobs/${id}`))).json()) as JobStatusBody
    const took = duration(Date.parse(job.finishedAt ?? '') - Date.parse(job.startedAt ?? ''))
    const [summary, heading, ...files] = lines(r.stderr)
    expect(summary).toBe(`completed in ${took}`)
    expect(job.artifacts.length).toBeGreaterThan(0)
    expect(heading).toBe(`artifacts (${job.artifacts.length})`)
    expect(files).toHaveLength(job.artifacts.length)
    for (const [i, a] of job.artifacts.entries()) {
      expect(files[i]).toMatch(
        new RegExp(`^ {2}${a.path.replace(/\./g, '\\.')} +${bytes(a.size)} {2}sha256:`),
      )
      expect(files[i]?.endsWith(`${stack.gateway.url}/api/jobs/${id}/artifacts/${a.path}`)).toBe(true)
    }
    // The sizes' column ends at one place.
    const ends = new Set(files.map((f) => f.indexOf('  sha256:')))
    expect([...ends]).toHaveLength(1)

    // A failed job: after how long, which attempt, and why.
    const failed = await gpuJobs(
      ['submit', 'train_voice', ...voice(1), '-p', 'datasetPath=empty', '--follow'],
      env,
    )
    expect(failed.code).toBe(1)
    // Refused data is not retried: which attempt it ended on, not "1 of 3" (attemptText, as the console).
    expect(lines(failed.stderr)).toEqual([expect.stringMatching(/^failed after \S+ \(attempt 1\)(:|$)/)])
    const failedId = lines(failed.stdout)[0] ?? ''
    expect((await gpuJobs(['status', failedId], env)).stdout).toMatch(/^attempt +1$/m)
    expect((await gpuJobs(['status', id], env)).stdout).toMatch(/^attempt +1 attempt$/m)
  })

  it('Ctrl-C: one line, the job goes on, how to resume; exit 130', async () => {
    const id = lines((await gpuJobs(['submit', 'train_voice', ...voice(1000)], env)).stdout)[0] ?? ''
    await stack.waitJob(id, (j) => j.status === 'running', 20_000, 'running')
    const r = await gpuJobs(['follow', id], env, (out) => lines(out).length >= 3)
    expect(r.code).toBe(130)
    expect(r.stderr).toBe(
      `stopped following; the job goes on (running). Resume: gpu-jobs follow ${shortJobId(id)}\n`,
    )
    expect(shortJobId(id)).toHaveLength(8)
    // It did go on, and the short id finds it.
    const job = (await (await fetch(stack.url(`/api/jobs/${id}`))).json()) as JobSummary
    expect(job.status).toBe('running')
    const status = await gpuJobs(['status', shortJobId(id)], env)
    expect(status.stdout).toMatch(new RegExp(`^job +${id}$`, 'm'))
    await waitFor(
      async () => (await gpuJobs(['cancel', shortJobId(id)], env)).code === 0,
      10_000,
      'cancelled',
    )
  })
})
