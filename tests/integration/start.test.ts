import { spawn } from 'node:child_process'
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { afterAll, describe, expect, it } from 'vitest'
import { completeDemoJob } from '../helpers/demo-job.ts'
import { freePort } from '../helpers/ports.ts'
import { TEST_REDIS_URL, waitFor } from '../helpers/stack.ts'

const run = (args: string[], env: Record<string, string>) => {
  const child = spawn(process.execPath, ['--import', 'tsx', ...args], {
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  let out = ''
  child.stdout.on('data', (d: Buffer) => {
    out += d.toString()
  })
  child.stderr.on('data', (d: Buffer) => {
    out += d.toString()
  })
  const exit = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)))
  return { child, exit, output: () => out }
}

const dirs: string[] = []
afterAll(async () => {
  for (const d of dirs) await rm(d, { recursive: true, force: true })
})

describe('npm start (all-in-one, embedded Postgres and S3)', () => {
  it('says in one line that Redis is unreachable, and exits 1', async () => {
    const port = await freePort()
    const p = run(['start.ts'], { REDIS_URL: `redis://127.0.0.1:${port}`, DATA_DIR: '/nonexistent' })
    expect(await p.exit).toBe(1)
    const lines = p
      .output()
      .trim()
      .split('\n')
      .filter((l) => !l.includes('NodeVersionSupportWarning') && l.trim() !== '')
    expect(lines[0]).toMatch(new RegExp(`^Redis is not reachable at 127.0.0.1:${port}`))
    expect(p.output()).not.toMatch(/\n\s+at /)
  })

  it('reports bad configuration clearly, and exits 2', async () => {
    const p = run(['start.ts'], { GATEWAY_PORT: 'x', SIMULATE_STEP_MS: '-1' })
    expect(await p.exit).toBe(2)
    expect(p.output()).toContain('GATEWAY_PORT: must be an integer')
    expect(p.output()).toContain('SIMULATE_STEP_MS')
  })

  it('runs a job end to end from a fresh DATA_DIR, then stops cleanly on Ctrl-C', async () => {
    const dataDir = await mkdtemp(path.join(tmpdir(), 'start-'))
    dirs.push(dataDir)
    const [gatewayPort, metricsPort, s3Port] = [await freePort(), await freePort(), await freePort()]
    const p = run(['start.ts'], {
      DATA_DIR: dataDir,
      GATEWAY_PORT: String(gatewayPort),
      METRICS_PORT: String(metricsPort),
      S3RVER_PORT: String(s3Port),
      SIMULATE_STEP_MS: '5',
      QUEUE_PREFIX: `start-${gatewayPort}`,
      REDIS_URL: TEST_REDIS_URL,
    })
    await waitFor(
      async () => p.output().includes('ready: submit a job'),
      90_000,
      `npm start to be ready: ${p.output()}`,
    )
    expect(p.output()).toContain(`embedded S3 server at http://127.0.0.1:${s3Port}`)
    const body = await completeDemoJob(`http://127.0.0.1:${gatewayPort}`, 'the job to complete')
    const { jobId } = body
    expect(body.artifacts.map((a) => a.path)).toContain('lora.safetensors')
    // The embedded S3 server keeps the files under DATA_DIR/s3.
    const bucketDir = path.join(dataDir, 's3', 'gpu-artifacts', 'loras', jobId)
    expect((await readdir(bucketDir)).some((f) => f.startsWith('manifest.json'))).toBe(true)
    expect(await readFile(path.join(dataDir, 'demo', 'sample1.txt'), 'utf8')).toContain('sks')
    const metrics = await (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text()
    expect(metrics).toMatch(/gpu_worker_jobs_total\{type="train_lora",status="completed"\} 1/)
    // Ctrl-C under `npm start` reaches the process twice at once (from the terminal and relayed by tsx).
    p.child.kill('SIGINT')
    p.child.kill('SIGINT')
    expect(await p.exit).toBe(0)
    expect(p.output()).not.toContain('second signal')
  })
})

describe('npm run job (no services)', () => {
  it('runs one job in a fresh process and writes its artifacts to a folder', async () => {
    const out = await mkdtemp(path.join(tmpdir(), 'job-out-'))
    dirs.push(out)
    const dataDir = await mkdtemp(path.join(tmpdir(), 'job-data-'))
    dirs.push(dataDir)
    await import('node:fs/promises').then((fs) =>
      fs.mkdir(path.join(dataDir, 'v')).then(() => fs.writeFile(path.join(dataDir, 'v', 'a.wav'), 'x')),
    )
    const p = run(
      [
        'gpu-host/job-cli.ts',
        'train_voice',
        '--params',
        '{"speakerName":"ann","datasetPath":"v","epochs":1}',
        '--out',
        out,
      ],
      {
        DATA_DIR: dataDir,
        SIMULATE_STEP_MS: '1',
      },
    )
    expect(await p.exit).toBe(0)
    expect(p.output()).toMatch(/\[100\.0%\]/)
    expect(p.output()).toContain('completed in')
    expect((await readdir(out)).sort()).toEqual(['speaker.json', 'voice.wav'])
    expect((await readFile(path.join(out, 'voice.wav'))).subarray(0, 4).toString()).toBe('RIFF')
  })

  it('fails with a clear reason and exit 1 when the engine is not configured', async () => {
    const p = run(
      [
        'gpu-host/job-cli.ts',
        'render_video',
        '--params',
        '{"engine":"comfyui"}',
        '--out',
        path.join(tmpdir(), 'never'),
      ],
      {},
    )
    expect(await p.exit).toBe(1)
    expect(p.output()).toMatch(/engine_not_configured/)
  })

  it('runs a job that names no engine on DEFAULT_ENGINE_<TYPE>', async () => {
    const p = run(
      ['gpu-host/job-cli.ts', 'render_video', '--params', '{}', '--out', path.join(tmpdir(), 'never')],
      { DEFAULT_ENGINE_RENDER_VIDEO: 'comfyui' },
    )
    expect(await p.exit).toBe(1)
    expect(p.output()).toMatch(
      /engine_not_configured.*comfyui|comfyui.*engine_not_configured|engine "comfyui"/,
    )
  })

  it('refuses bad usage with exit 2', async () => {
    const p = run(['gpu-host/job-cli.ts', 'mine_bitcoin'], {})
    expect(await p.exit).toBe(2)
    expect(p.output()).toContain('usage: npm run job')
  })
})
