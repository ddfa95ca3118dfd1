import { execFile } from 'node:child_process'
import { randomUUID } from 'node:crypto'
import { writeFile } from 'node:fs/promises'
import net, { type AddressInfo } from 'node:net'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { EXIT, type Output, run } from '../../gateway/cli/main.ts'
import type { JobStatusBody } from '../../schema/api.ts'
import { jobAttempts, jobs } from '../../schema/db/tables.ts'
import { isolatedDatabase, type Stack, startStack, waitFor } from '../helpers/stack.ts'

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..')
const bin = path.join(root, 'gateway/cli/gpu-jobs.mjs')
const FAST_RECONNECT = { baseDelayMs: 50, maxDelayMs: 200, giveUpMs: 5_000 }

class Sink implements Output {
  text = ''
  constructor(
    readonly isTTY = false,
    readonly columns = 100,
  ) {}
  write(chunk: string): boolean {
    this.text += chunk
    return true
  }
  get lines(): string[] {
    return this.text.split('\n').filter((l) => l !== '')
  }
}

interface Started {
  out: Sink
  err: Sink
  done: Promise<number>
}

/** Runs the CLI in this process against `url`, without waiting for it. */
function start(
  url: string,
  args: string[],
  opts: { tty?: boolean; env?: Record<string, string>; signal?: AbortSignal } = {},
): Started {
  const out = new Sink(opts.tty)
  const err = new Sink()
  const done = run(args, {
    stdout: out,
    stderr: err,
    env: { GPU_JOBS_URL: url, ...opts.env },
    signal: opts.signal,
    reconnect: FAST_RECONNECT,
  })
  return { out, err, done }
}

async function cli(url: string, args: string[], opts: Parameters<typeof start>[2] = {}) {
  const s = start(url, args, opts)
  const code = await s.done
  return { code, out: s.out.text, err: s.err.text, lines: s.out.lines }
}

/** A port nothing listens on. */
async function closedPort(): Promise<number> {
  const server = net.createServer()
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
  const { port } = server.address() as AddressInfo
  await new Promise<void>((r) => server.close(() => r()))
  return port
}

/** A TCP proxy in front of the gateway whose connections can be cut, to drop the CLI's stream. */
async function startProxy(targetPort: number) {
  const sockets = new Set<net.Socket>()
  let connections = 0
  const server = net.createServer((client) => {
    connections++
    const upstream = net.connect(targetPort, '127.0.0.1')
    sockets.add(client).add(upstream)
    const drop = () => {
      client.destroy()
      upstream.destroy()
      sockets.delete(client)
      sockets.delete(upstream)
    }
    for (const s of [client, upstream]) {
      s.on('error', drop)
      s.on('close', drop)
    }
    client.pipe(upstream)
    upstream.pipe(client)
  })
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
  const { port } = server.address() as AddressInfo
  return {
    url: `http://127.0.0.1:${port}`,
    connections: () => connections,
    cut: () => {
      for (const s of sockets) s.destroy()
      sockets.clear()
    },
    close: async () => {
      const closed = new Promise<void>((r) => server.close(() => r()))
      for (const s of sockets) s.destroy()
      await closed
    },
  }
}

function execBin(
  args: string[],
  env: Record<string, string>,
): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      [bin, ...args],
      { cwd: root, env: { ...process.env, ...env }, timeout: 30_000 },
      (error, stdout, stderr) => {
        const code = error ? ((error as { code?: number }).code ?? 1) : 0
        resolve({ code: typeof code === 'number' ? code : 1, stdout, stderr })
      },
    )
  })
}

/** The seq numbers of one-line-per-event output (`<timestamp>  #<seq> <status> ...`). */
const seqs = (lines: string[]) =>
  lines.map((l) => l.match(/^\S+ {2}#(\d+) /)?.[1]).flatMap((s) => (s ? [Number(s)] : []))

const expectConsecutive = (ns: number[]) => {
  expect(ns.length).toBeGreaterThan(1)
  for (let i = 1; i < ns.length; i++) expect(ns[i]).toBe((ns[i - 1] ?? 0) + 1)
}

let stack: Stack
let url: string
/** `-p a=1 -p b=2 ...` */
const params = (...assignments: string[]) => assignments.flatMap((a) => ['-p', a])
const lora = (epochs: number) => params('baseModel=sd15', 'datasetPath=ds', `epochs=${epochs}`, 'rank=4')

async function jobStatus(jobId: string): Promise<JobStatusBody> {
  const res = await fetch(stack.url(`/api/jobs/${jobId}`))
  return (await res.json()) as JobStatusBody
}

// Its own database: `list` shows every job of an open gateway, and other test files' rows would show too.
let database: Awaited<ReturnType<typeof isolatedDatabase>> | undefined
beforeAll(async () => {
  database = await isolatedDatabase()
  stack = await startStack({ databaseUrl: database.url })
  url = stack.gateway.url
})
afterAll(async () => {
  await stack?.close()
  await database?.drop()
})

describe('gpu-jobs submit', () => {
  it('builds typed, nested params from --param and prints the job id', async () => {
    const jobId = `cli-nested-${randomUUID().slice(0, 8)}`
    const args = [
      'submit',
      'render_video',
      '--param',
      'inputs.prompt=a cat',
      '--param',
      'inputs.seed=42',
      '-p',
      'width=64',
      '-p',
      'height=48',
      '-p',
      'frames=4',
      '-p',
      'fps=2',
      '--job-id',
      jobId,
      '--priority',
      '3',
      '--timeout',
      '10m',
      '--max-attempts',
      '2',
    ]
    const r = await cli(url, args)
    expect(r.err).toBe('')
    expect(r.code).toBe(EXIT.ok)
    expect(r.out).toBe(`${jobId}\n`)
    const job = await jobStatus(jobId)
    expect(job.params).toEqual({
      inputs: { prompt: 'a cat', seed: 42 },
      width: 64,
      height: 48,
      frames: 4,
      fps: 2,
      // Named by the gateway (DEFAULT_ENGINE_RENDER_VIDEO unset: the first engine).
      engine: 'simulate',
    })
    expect(job.maxAttempts).toBe(2)

    // The same request again: the existing job, said so on stderr; the same id with another body: 409.
    const again = await cli(url, args)
    expect(again.code).toBe(EXIT.ok)
    expect(again.out).toBe(`${jobId}\n`)
    expect(again.err).toMatch(/already exists/)
    const other = await cli(url, ['submit', 'render_video', '-p', 'frames=4', '--job-id', jobId])
    expect(other.code).toBe(EXIT.error)
    expect(other.err).toMatch(/conflict/)
  })

  it('merges --param over --params (inline or @file) and sends numbers as numbers', async () => {
    const file = path.join(stack.dataDir, 'params.json')
    await writeFile(file, JSON.stringify({ baseModel: 'sd15', datasetPath: 'ds', epochs: 9 }))
    const r = await cli(url, [
      'submit',
      'train_lora',
      '--params',
      `@${file}`,
      '-p',
      'epochs=1',
      '-p',
      'learningRate=2e-4',
      '--json',
    ])
    expect(r.code).toBe(EXIT.ok)
    const body = JSON.parse(r.out) as { jobId: string; status: string; statusUrl: string }
    expect(body.status).toBe('queued')
    expect((await jobStatus(body.jobId)).params).toEqual({
      baseModel: 'sd15',
      datasetPath: 'ds',
      epochs: 1,
      learningRate: 2e-4,
      engine: 'simulate',
    })
  })

  it('--follow prints one line per event and exits 0 on completed', async () => {
    const r = await cli(url, ['submit', 'train_lora', ...lora(2), '--follow'])
    // stderr: only how it ended (tests/cli/polish.test.ts has the whole summary).
    expect(r.err).toMatch(/^completed in \d+(ms|s)\nartifacts \(\d+\)\n/)
    expect(r.code).toBe(EXIT.ok)
    const [id, ...events] = r.lines
    expect(id).toMatch(/^[0-9a-f-]{36}$/)
    expect(events.length).toBeGreaterThan(5)
    expect(events.at(-1)).toMatch(/#\d+ +completed\s+100%/)
    expect(events.some((l) => / running /.test(l))).toBe(true)
    expectConsecutive(seqs(events))
  })

  it('--follow exits 1 when the job fails', async () => {
    // datasetPath `empty` exists and holds no files: invalid_dataset, not retried. (A job for an engine no
    // host has waits in the queue rather than failing: docs/engines/README.md.)
    const r = await cli(url, ['submit', 'train_lora', ...lora(1), '-p', 'datasetPath=empty', '--follow'])
    expect(r.code).toBe(EXIT.failed)
    expect(r.lines.at(-1)).toMatch(/#\d+ +failed .*invalid_dataset/)
  })

  it('--follow --sse --json prints the events as JSON lines', async () => {
    const r = await cli(url, [
      'submit',
      'train_voice',
      ...params('speakerName=ann', 'datasetPath=ds', 'epochs=1'),
      '--follow',
      '--sse',
      '--json',
    ])
    expect(r.code).toBe(EXIT.ok)
    const [submitted, ...events] = r.lines.map((l) => JSON.parse(l) as Record<string, unknown>)
    expect(submitted).toMatchObject({ status: 'queued' })
    expect(events.at(-1)).toMatchObject({ jobId: submitted?.jobId, status: 'completed', progress: 100 })
    expectConsecutive(events.map((e) => e.seq as number))
  })

  it('reports a validation error with every field, exit 3', async () => {
    const r = await cli(url, [
      'submit',
      'train_lora',
      ...params('baseModel=sd15', 'datasetPath=ds', 'epochs=many', 'colour=red'),
    ])
    expect(r.code).toBe(EXIT.error)
    expect(r.out).toBe('')
    // Each field once: a count, then one line each.
    const lines = r.err.trim().split('\n')
    expect(lines[0]).toBe('error: invalid_params: 2 fields')
    expect(lines).toHaveLength(3)
    expect(lines).toContain('  params.epochs: must be number')
    expect(lines.some((l) => /^ {2}params\.colour: /.test(l))).toBe(true)
    expect(r.err).not.toMatch(/\n\s+at /)

    const badType = await cli(url, ['submit', 'train_dragon', '-p', 'x=1'])
    expect(badType.code).toBe(EXIT.error)
    expect(badType.err).toMatch(/^error: invalid_request: type /)
  })

  it('refuses bad usage with exit 3 and a pointer to --help', async () => {
    for (const args of [
      ['submit'],
      ['submit', 'train_lora', '-p', 'epochs'],
      ['submit', 'train_lora', '--priority', 'high'],
      ['submit', 'train_lora', '--params', '[1]'],
      ['submit', 'train_lora', '--nope'],
      ['status'],
      ['frobnicate'],
    ]) {
      const r = await cli(url, args)
      expect(r.code, args.join(' ')).toBe(EXIT.error)
      expect(r.err, args.join(' ')).toMatch(/^error: .+\nrun "gpu-jobs( \w+)? --help" for usage\n$/)
    }
  })

  it('has --help for each command', async () => {
    for (const cmd of ['submit', 'status', 'list', 'cancel', 'follow']) {
      const r = await cli(url, [cmd, '--help'])
      expect(r.code).toBe(EXIT.ok)
      expect(r.out).toMatch(new RegExp(`^Usage: gpu-jobs ${cmd}`))
    }
    const main = await cli(url, ['--help'])
    expect(main.out).toMatch(/Exit codes:[\s\S]*2 {2}follow: the job was cancelled/)
    expect((await cli(url, [])).code).toBe(EXIT.error)
  })
})

describe('gpu-jobs status, list, follow', () => {
  let loraId: string
  let videoId: string
  beforeAll(async () => {
    loraId = (await cli(url, ['submit', 'train_lora', ...lora(1)])).out.trim()
    videoId = (
      await cli(url, ['submit', 'render_video', '-p', 'frames=3', '-p', 'width=64', '-p', 'height=48'])
    ).out.trim()
    for (const id of [loraId, videoId])
      await waitFor(async () => (await jobStatus(id)).status === 'completed', 30_000, `${id} completed`)
  })

  it('status prints a readable summary with artifact URLs; --json the raw body', async () => {
    const r = await cli(url, ['status', loraId])
    expect(r.code).toBe(EXIT.ok)
    expect(r.out).toMatch(new RegExp(`^job +${loraId}$`, 'm'))
    expect(r.out).toMatch(/^type +train_lora$/m)
    expect(r.out).toMatch(/^status +completed {2}100%$/m)
    expect(r.out).toMatch(/^attempt +1 attempt$/m) // completed: not "1 of 3" (no attempt will follow)
    expect(r.out).toMatch(/^params +\{.*"baseModel":"sd15".*\}$/m)
    expect(r.out).toMatch(/^artifacts \(\d+\)$/m)
    expect(r.out).toContain(`lora.safetensors`)
    expect(r.out).toContain(`${url}/api/jobs/${loraId}/artifacts/lora.safetensors`)

    const json = await cli(url, ['status', loraId, '--json'])
    expect(JSON.parse(json.out)).toMatchObject({ jobId: loraId, status: 'completed', progress: 100 })
  })

  it('list filters by type and status and pages with a cursor', async () => {
    const r = await cli(url, ['list', '--type', 'train_lora', '--status', 'completed', '--limit', '20'])
    expect(r.code).toBe(EXIT.ok)
    const [header, ...rows] = r.lines
    expect(header).toMatch(/^JOB ID +TYPE +STATUS +PROGRESS +CREATED +MESSAGE$/)
    expect(rows.some((l) => l.startsWith(`${loraId} `))).toBe(true)
    expect(rows.some((l) => l.startsWith(`${videoId} `))).toBe(false)
    for (const row of rows) expect(row).toMatch(/^\S+ +train_lora +completed( \(\d+\/\d+\))? +100% /)

    const json = await cli(url, ['list', '--type', 'render_video', '--json'])
    const page = JSON.parse(json.out) as { jobs: JobStatusBody[] }
    expect(page.jobs.map((j) => j.jobId)).toContain(videoId)
    expect(page.jobs.every((j) => j.type === 'render_video')).toBe(true)

    const first = await cli(url, ['list', '--limit', '1'])
    expect(first.lines).toHaveLength(2)
    const next = first.err.match(/^more: gpu-jobs list --limit 1 --cursor (\S+)$/m)?.[1]
    expect(next).toBeTruthy()
    const second = await cli(url, ['list', '--limit', '1', '--cursor', next ?? ''])
    expect(second.code).toBe(EXIT.ok)
    expect(second.lines[1]).not.toBe(first.lines[1])

    const bad = await cli(url, ['list', '--status', 'sleeping'])
    expect(bad.code).toBe(EXIT.error)
    expect(bad.err).toBe('error: invalid_query: status must be a job status\n')
  })

  it('follow of a finished job prints its final state at once', async () => {
    const r = await cli(url, ['follow', videoId])
    expect(r.code).toBe(EXIT.ok)
    expect(r.lines).toHaveLength(1)
    expect(r.lines[0]).toMatch(/completed\s+100%/)
  })

  it('draws a progress bar with \\r on a terminal', async () => {
    const id = (await cli(url, ['submit', 'train_lora', ...lora(3)])).out.trim()
    const r = await cli(url, ['follow', id], { tty: true })
    expect(r.code).toBe(EXIT.ok)
    expect(r.out.startsWith('\r')).toBe(true)
    expect(r.out.endsWith('\n')).toBe(true)
    // Each frame: `\r<bar line>ESC[K` (clear to end of line); the last one ends the line.
    const CLEAR = '\u001b[K'
    const frames = r.out.split('\r').filter(Boolean)
    expect(frames.length).toBeGreaterThan(1)
    expect(frames.at(-1)?.endsWith(`${CLEAR}\n`)).toBe(true)
    expect(frames.at(-1)).toMatch(/^\[█{24}\] +100% {2}completed/)
    for (const f of frames) {
      expect(f).toContain(CLEAR)
      expect(f.slice(0, f.indexOf(CLEAR)).length).toBeLessThan(100)
    }
  })

  it('an unknown job is a clear 404, exit 3', async () => {
    for (const cmd of ['status', 'follow', 'cancel']) {
      const r = await cli(url, [cmd, 'no-such-job-42'])
      expect(r.code).toBe(EXIT.error)
      expect(r.err).toBe('error: not_found: no job "no-such-job-42"\n')
    }
  })
})

describe('gpu-jobs cancel', () => {
  it('cancels a long-running job; follow then exits 2', async () => {
    const id = (await cli(url, ['submit', 'train_lora', ...lora(1000)])).out.trim()
    await waitFor(async () => (await jobStatus(id)).status === 'running', 30_000, 'running')
    const following = start(url, ['follow', id])
    await waitFor(async () => following.out.lines.length > 2, 10_000, 'events')

    const r = await cli(url, ['cancel', id])
    expect(r.code).toBe(EXIT.ok)
    expect(r.out).toMatch(new RegExp(`^(cancel requested for ${id} \\(it is running|cancelled ${id})`))

    expect(await following.done).toBe(EXIT.cancelled)
    expect(following.out.lines.at(-1)).toMatch(/ cancelled /)
    expectConsecutive(seqs(following.out.lines))

    // Following it afterwards: the same outcome at once; cancelling again is a conflict.
    expect((await cli(url, ['follow', id])).code).toBe(EXIT.cancelled)
    const again = await cli(url, ['cancel', id])
    expect(again.code).toBe(EXIT.error)
    expect(again.err).toBe('error: conflict: job is already cancelled\n')
  })
})

describe('gpu-jobs rerun, retry, and the attempts in status', () => {
  /** A train_voice job whose first attempt failed, waiting an hour for its second: row and delayed job. */
  async function retryingJob(): Promise<string> {
    const jobId = `cli-retry-${randomUUID().slice(0, 8)}`
    const params = { speakerName: 'ann', datasetPath: 'ds', epochs: 1, engine: 'simulate' }
    const startedAt = new Date(Date.now() - 4000)
    await stack.database.db.insert(jobs).values({
      id: jobId,
      type: 'train_voice',
      status: 'retrying',
      params,
      attempt: 1,
      maxAttempts: 2,
      startedAt,
      nextAttemptAt: new Date(Date.now() + 3_600_000),
      outputPrefix: `voices/${jobId}`,
    })
    await stack.database.db.insert(jobAttempts).values({
      jobId,
      attempt: 1,
      host: 'host-x',
      startedAt,
      finishedAt: new Date(Date.now() - 1000),
      outcome: 'retrying',
      reason: 'crash',
      message: 'exited with code 3',
    })
    const envelope = { jobId, type: 'train_voice', params, artifacts: { outputPrefix: `voices/${jobId}` } }
    await stack.queue.add('train_voice', { ...envelope, maxAttempts: 2 }, { jobId, delay: 3_600_000 })
    return jobId
  }

  it('retry starts the next attempt now; status lists both attempts; retry again is a conflict', async () => {
    const jobId = await retryingJob()
    const before = await cli(url, ['status', jobId])
    expect(before.out).toMatch(/^attempts \(1\)$/m)
    expect(before.out).toMatch(/^ {2}#1 {2}host-x {2}3s {2}failed {2}crash {2}exited with code 3$/m)
    // By a unique prefix of its id, as every command takes it.
    const r = await cli(url, ['retry', jobId.slice(0, -4)])
    expect(r.err).toBe('')
    expect(r.code).toBe(EXIT.ok)
    expect(r.out).toMatch(new RegExp(`^next attempt of ${jobId} requested now`))
    expect((await cli(url, ['follow', jobId])).code).toBe(EXIT.ok)
    const after = await cli(url, ['status', jobId])
    expect(after.out).toMatch(/^attempts \(2\)$/m)
    expect(after.out).toMatch(new RegExp(`^ {2}#2 {2}${stack.config.hostId} +\\S+ +completed$`, 'm'))
    const again = await cli(url, ['retry', jobId])
    expect(again.code).toBe(EXIT.error)
    expect(again.err).toBe(
      'error: conflict: job is completed, not retrying: only a retrying job can be retried now\n',
    )
  })

  it('rerun prints the new id and, with --follow, follows it to the end', async () => {
    const id = (await cli(url, ['submit', 'train_lora', ...lora(1), '--max-attempts', '2'])).out.trim()
    const r = await cli(url, ['rerun', id, '--follow'])
    expect(r.code).toBe(EXIT.ok)
    const [newId] = r.lines
    expect(newId).toMatch(/^[0-9a-f-]{36}$/)
    expect(newId).not.toBe(id)
    expect(r.lines.at(-1)).toMatch(/ completed /)
    const [copy, original] = [await jobStatus(newId ?? ''), await jobStatus(id)]
    expect(copy).toMatchObject({ type: 'train_lora', params: original.params, maxAttempts: 2 })
    const json = await cli(url, ['rerun', id.slice(0, 8), '--json'])
    expect(JSON.parse(json.out)).toMatchObject({ status: 'queued', statusUrl: expect.any(String) })
    const missing = await cli(url, ['rerun', 'no-such-job-42'])
    expect(missing.code).toBe(EXIT.error)
    expect(missing.err).toBe('error: not_found: no job "no-such-job-42"\n')
  })
})

describe('follow across dropped connections', () => {
  it.each(['ws', 'sse'])('resumes after the last seq over %s: no gap, no duplicate', async (transport) => {
    const proxy = await startProxy(stack.gateway.port)
    try {
      const id = (await cli(url, ['submit', 'train_lora', ...lora(40)])).out.trim()
      const following = start(proxy.url, ['follow', id, ...(transport === 'sse' ? ['--sse'] : [])])
      await waitFor(async () => following.out.lines.length >= 5, 20_000, 'first events')
      const before = proxy.connections()
      proxy.cut()
      expect(await following.done).toBe(EXIT.ok)
      expect(proxy.connections()).toBeGreaterThan(before)
      expect(following.err.text).toMatch(/^connection lost \(.+\); reconnecting in \d+\.\ds \(try 1\)$/m)
      const ns = seqs(following.out.lines)
      expectConsecutive(ns)
      expect(following.out.lines.at(-1)).toMatch(/completed\s+100%/)
    } finally {
      await proxy.close()
    }
  })

  it('gives up with exit 3 when the gateway stays away', async () => {
    const proxy = await startProxy(stack.gateway.port)
    const id = (await cli(url, ['submit', 'train_lora', ...lora(1000)])).out.trim()
    const out = new Sink()
    const err = new Sink()
    const done = run(['follow', id], {
      stdout: out,
      stderr: err,
      env: { GPU_JOBS_URL: proxy.url },
      reconnect: { baseDelayMs: 50, maxDelayMs: 100, giveUpMs: 800 },
    })
    await waitFor(async () => out.lines.length >= 2, 20_000, 'first events')
    await proxy.close()
    expect(await done).toBe(EXIT.error)
    expect(err.text).toMatch(/reconnecting/)
    // The notices of each try, then the error once.
    expect(err.text.match(/^error:/gm)).toHaveLength(1)
    expect(err.text.match(/could not resume it/g)).toHaveLength(1)
    expect(err.text.trim().split('\n').at(-1)).toMatch(
      /^error: cannot reach the gateway at http:\/\/127\.0\.0\.1:\d+ \(lost the event stream and could not resume it for 1s: .+\); is it running\?/,
    )
    await cli(url, ['cancel', id])
  })

  it('stops on abort (Ctrl-C) with 130', async () => {
    const id = (await cli(url, ['submit', 'train_lora', ...lora(1000)])).out.trim()
    const ac = new AbortController()
    const following = start(url, ['follow', id], { signal: ac.signal, tty: true })
    await waitFor(async () => following.out.text.length > 0, 20_000, 'first events')
    ac.abort()
    expect(await following.done).toBe(EXIT.interrupted)
    expect(following.out.text.endsWith('\n')).toBe(true)
    await cli(url, ['cancel', id])
  })
})

describe('connection errors', () => {
  it('a closed port is one clear line, exit 3', async () => {
    const port = await closedPort()
    for (const args of [
      ['list'],
      ['status', 'x-1'],
      ['follow', 'x-1'],
      ['submit', 'train_lora', '-p', 'a=1'],
    ]) {
      const r = await cli(`http://127.0.0.1:${port}`, args)
      expect(r.code).toBe(EXIT.error)
      expect(r.err).toBe(
        `error: cannot reach the gateway at http://127.0.0.1:${port} (ECONNREFUSED); is it running? (set GPU_JOBS_URL or --url)\n`,
      )
    }
    const badUrl = await cli('ftp://example', ['list'])
    expect(badUrl.code).toBe(EXIT.error)
    expect(badUrl.err).toMatch(/^error: GPU_JOBS_URL must be an http/)
    // A password in the URL is refused, and not printed back.
    const withSecret = await cli(`http://u:s3cret-token-0123@127.0.0.1:${port}`, ['hosts'])
    expect(withSecret.code).toBe(EXIT.error)
    expect(withSecret.err).toMatch(
      /^error: GPU_JOBS_URL must not hold a user or password \(http:\/\/127\.0\.0\.1:\d+\): set the API token in GPU_JOBS_TOKEN\n/,
    )
    expect(withSecret.err).not.toContain('s3cret')
  })
})

describe('the bin (node gateway/cli/gpu-jobs.mjs)', () => {
  it('runs status on plain Node through tsx, and exits 3 on a closed port', async () => {
    const id = (await cli(url, ['submit', 'train_lora', ...lora(1), '--follow'])).lines[0] ?? ''
    const r = await execBin(['status', id], { GPU_JOBS_URL: url })
    expect(r.stderr).toBe('')
    expect(r.code).toBe(0)
    expect(r.stdout).toMatch(new RegExp(`^job +${id}\\n`))
    expect(r.stdout).toMatch(/^status +completed {2}100%$/m)

    const port = await closedPort()
    const down = await execBin(['list'], { GPU_JOBS_URL: `http://127.0.0.1:${port}` })
    expect(down.code).toBe(3)
    expect(down.stderr).toMatch(/^error: cannot reach the gateway at .+ \(ECONNREFUSED\)/)
    expect(down.stderr.trim().split('\n')).toHaveLength(1)
  })

  it.each(['ws', 'sse'])(
    'exits once the job it follows over %s has ended (nothing left waiting)',
    async (t) => {
      // A socket, reader or timer left behind would keep the process alive past execBin's 30 s limit.
      const args = ['submit', 'train_lora', ...lora(1), '--follow', ...(t === 'sse' ? ['--sse'] : [])]
      const r = await execBin(args, { GPU_JOBS_URL: url })
      expect(r.stderr).toMatch(/^completed in /)
      expect(r.code).toBe(0)
      expect(r.stdout.trim().split('\n').at(-1)).toMatch(/completed\s+100%/)
    },
  )
})

describe('with API tokens', () => {
  let authed: Stack
  beforeAll(async () => {
    authed = await startStack({
      env: { API_TOKENS: 'alice:alice-token-0000001,bob:bob-token-00000022' },
      withHost: false,
    })
  })
  afterAll(async () => {
    await authed?.close()
  })

  it('sends GPU_JOBS_TOKEN as a bearer token over REST, WebSocket and SSE', async () => {
    const u = authed.gateway.url
    const none = await cli(u, ['list'])
    expect(none.code).toBe(EXIT.error)
    expect(none.err).toBe('error: unauthorized: the gateway asks for an API token: set GPU_JOBS_TOKEN\n')

    const env = { GPU_JOBS_TOKEN: 'alice-token-0000001' }
    const id = (await cli(u, ['submit', 'train_lora', ...lora(1)], { env })).out.trim()
    expect(id).toMatch(/^[0-9a-f-]{36}$/)
    // No GPU host here: the job stays queued while both transports follow it.
    const ws = start(u, ['follow', id], { env })
    const sse = start(u, ['follow', id, '--sse'], { env })
    await waitFor(async () => ws.out.lines.length > 0 && sse.out.lines.length > 0, 10_000, 'queued event')
    expect(ws.out.lines[0]).toMatch(/#1 +queued +0%/)

    // Bob cannot see it.
    const bob = await cli(u, ['status', id], { env: { GPU_JOBS_TOKEN: 'bob-token-00000022' } })
    expect(bob.err).toBe(`error: not_found: no job "${id}"\n`)

    const cancelled = await cli(u, ['cancel', id], { env })
    expect(cancelled.out).toBe(`cancelled ${id}\n`)
    expect(await ws.done).toBe(EXIT.cancelled)
    expect(await sse.done).toBe(EXIT.cancelled)
    expect(sse.out.lines.at(-1)).toMatch(/ cancelled +0%/)
    expect((await cli(u, ['list', '--status', 'cancelled'], { env })).out).toContain(id)
  })
})
