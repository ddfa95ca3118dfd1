import { type ChildProcess, spawn, spawnSync } from 'node:child_process'
import { existsSync } from 'node:fs'
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { createServer, type Server } from 'node:net'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { afterAll, describe, expect, it } from 'vitest'
import { completeDemoJob } from '../helpers/demo-job.ts'
import { freePort } from '../helpers/ports.ts'
import { startS3, TEST_DATABASE_URL, TEST_REDIS_URL, waitFor } from '../helpers/stack.ts'

const ROOT = fileURLToPath(new URL('../..', import.meta.url))

/** Something else holding a port, as a stray process would. */
const holdPort = (port: number, host = '127.0.0.1') =>
  new Promise<Server>((resolve) => {
    const s = createServer().listen(port, host, () => resolve(s))
  })

interface Proc {
  child: ChildProcess
  exit: Promise<{ code: number | null; signal: NodeJS.Signals | null }>
  output: () => string
}

const procs: Proc[] = []
const cleanups: (() => Promise<unknown>)[] = []
afterAll(async () => {
  for (const p of procs) if (p.child.exitCode === null && p.child.signalCode === null) p.child.kill('SIGKILL')
  for (const c of cleanups.reverse()) await c().catch(() => {})
})

/** `command args` in its own process group (as a terminal runs a foreground job), output collected. */
function launch(command: string, args: string[], env: Record<string, string | undefined>): Proc {
  const child = spawn(command, args, {
    cwd: ROOT,
    env: { ...process.env, LOG_FORMAT: 'json', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
    detached: true,
  })
  let out = ''
  child.stdout?.on('data', (d: Buffer) => {
    out += d.toString()
  })
  child.stderr?.on('data', (d: Buffer) => {
    out += d.toString()
  })
  const exit = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.on('exit', (code, signal) => resolve({ code, signal })),
  )
  const p = { child, exit, output: () => out }
  procs.push(p)
  return p
}

const startTs = (env: Record<string, string | undefined>) =>
  launch(process.execPath, ['--import', 'tsx', 'start.ts'], env)

/** The lines a failed start printed, without Node's own warnings. */
const lines = (out: string) =>
  out
    .trim()
    .split('\n')
    .filter((l) => l.trim() !== '' && !l.includes('NodeVersionSupportWarning'))

/** A fresh DATA_DIR and free ports for one `npm start`. */
async function instanceEnv(): Promise<Record<string, string>> {
  const dataDir = await mkdtemp(path.join(tmpdir(), 'start-guard-'))
  cleanups.push(() => rm(dataDir, { recursive: true, force: true }))
  const [gateway, metrics, s3] = [await freePort(), await freePort(), await freePort()]
  return {
    DATA_DIR: dataDir,
    GATEWAY_PORT: String(gateway),
    METRICS_PORT: String(metrics),
    S3RVER_PORT: String(s3),
    REDIS_URL: TEST_REDIS_URL,
    QUEUE_PREFIX: `guard-${gateway}`,
    SIMULATE_STEP_MS: '5',
  }
}

const ready = (p: Proc) =>
  waitFor(
    async () => p.output().includes('ready: submit a job'),
    90_000,
    `npm start to be ready: ${p.output()}`,
  )

/** Expects a start that failed at once: non-zero exit, one line matching `line`, no stack trace. */
async function expectOneLine(p: Proc, line: RegExp): Promise<void> {
  const { code } = await p.exit
  expect(code, p.output()).not.toBe(0)
  expect(code, p.output()).not.toBeNull()
  const printed = lines(p.output())
  expect(printed, p.output()).toHaveLength(1)
  expect(printed[0]).toMatch(line)
  expect(p.output()).not.toMatch(/\n\s+at /)
}

describe('a second npm start in the same folder', () => {
  it('says in one line that another instance holds DATA_DIR, exits 1, and leaves the first one running', async () => {
    const env = await instanceEnv()
    const first = startTs(env)
    await ready(first)
    const lockFile = path.join(env.DATA_DIR as string, '.lock')
    expect((await readFile(lockFile, 'utf8')).trim()).toBe(String(first.child.pid))

    // Same folder and the same ports: the lock is what it must hit first, before PGlite is opened.
    const second = startTs(env)
    await expectOneLine(
      second,
      new RegExp(`another instance \\(pid ${first.child.pid}\\) is using DATA_DIR ${env.DATA_DIR}`),
    )
    expect(first.child.exitCode).toBeNull()
    expect((await readFile(lockFile, 'utf8')).trim()).toBe(String(first.child.pid))
    await completeDemoJob(`http://127.0.0.1:${env.GATEWAY_PORT}`, 'the first instance to complete a job')
    first.child.kill('SIGTERM')
    expect((await first.exit).code).toBe(0)
    expect(existsSync(lockFile)).toBe(false)
  })

  it('takes over the lock of an instance that died (its pid is gone)', async () => {
    const env = await instanceEnv()
    // A pid that is surely dead: a process that already exited.
    const dead = spawnSync(process.execPath, [
      '-e',
      'process.stdout.write(String(process.pid))',
    ]).stdout.toString()
    await writeFile(path.join(env.DATA_DIR as string, '.lock'), `${dead}\n`)
    const p = startTs(env)
    await ready(p)
    expect((await readFile(path.join(env.DATA_DIR as string, '.lock'), 'utf8')).trim()).toBe(
      String(p.child.pid),
    )
    p.child.kill('SIGTERM')
    expect((await p.exit).code).toBe(0)
  })

  it.each([
    ['GATEWAY_PORT', 'the gateway'],
    ['METRICS_PORT', 'the GPU host'],
    ['S3RVER_PORT', 'the embedded S3 server'],
  ])('names the taken port and %s in one line, before opening anything', async (variable) => {
    const env = await instanceEnv()
    const port = Number(env[variable])
    const holder = await holdPort(port)
    cleanups.push(() => new Promise((r) => holder.close(r)))
    const p = startTs(env)
    await expectOneLine(p, new RegExp(`port ${port} .*in use.*${variable}`))
    // Nothing was opened: no PGlite folder, no lock left behind.
    expect(existsSync(path.join(env.DATA_DIR as string, 'pglite'))).toBe(false)
    expect(existsSync(path.join(env.DATA_DIR as string, '.lock'))).toBe(false)
  })
})

describe('npm run gateway / npm run gpu-host with a taken port', () => {
  it.each([
    ['gateway', 'gateway/main.ts', 'GATEWAY_PORT'],
    ['gpu-host', 'gpu-host/main.ts', 'METRICS_PORT'],
  ])('npm run %s prints one line naming %s and exits 1', async (_name, entry, variable) => {
    const s3 = await startS3()
    cleanups.push(() => s3.close())
    const port = await freePort()
    const holder = await holdPort(port)
    cleanups.push(() => new Promise((r) => holder.close(r)))
    const dataDir = await mkdtemp(path.join(tmpdir(), 'svc-guard-'))
    cleanups.push(() => rm(dataDir, { recursive: true, force: true }))
    const p = launch(process.execPath, ['--import', 'tsx', entry], {
      REDIS_URL: TEST_REDIS_URL,
      DATABASE_URL: TEST_DATABASE_URL,
      S3_ENDPOINT: s3.endpoint,
      DATA_DIR: dataDir,
      [variable]: String(port),
      QUEUE_PREFIX: `guard-svc-${port}`,
    })
    await expectOneLine(p, new RegExp(`port ${port} .*in use.*${variable}`))
  })
})

describe('Ctrl-C on npm start', () => {
  it('exits 0 when the terminal sends SIGINT to the whole foreground process group', async () => {
    const env = await instanceEnv()
    const p = launch('npm', ['start', '--silent'], env)
    await ready(p)
    // What a terminal does on Ctrl-C: SIGINT to every process of the group (npm, its shell, node).
    process.kill(-(p.child.pid as number), 'SIGINT')
    expect(await p.exit, p.output()).toEqual({ code: 0, signal: null })
    expect(p.output()).not.toContain('second signal')
  })
})

// A machine with redis-server installed but not running: a fresh network namespace (nothing listens on
// 127.0.0.1:6379 there, whatever this machine runs) with its own loopback.
const canIsolate =
  spawnSync('unshare', ['-n', 'sh', '-c', 'ip link set lo up'], { stdio: 'ignore' }).status === 0 &&
  spawnSync('sh', ['-c', 'command -v redis-server'], { stdio: 'ignore' }).status === 0

describe.skipIf(!canIsolate)(
  `npm start with REDIS_URL unset and no Redis answering${canIsolate ? '' : ' (skipped: needs unshare -n as root and redis-server)'}`,
  () => {
    const isolated = (env: Record<string, string | undefined>) =>
      launch(
        'unshare',
        ['-n', 'sh', '-c', `ip link set lo up && exec "${process.execPath}" --import tsx start.ts`],
        {
          ...env,
          REDIS_URL: undefined,
        },
      )
    const alive = (pid: number) => {
      try {
        process.kill(pid, 0)
        return true
      } catch {
        return false
      }
    }

    it('runs redis-server under DATA_DIR/redis (AOF) and stops it with Ctrl-C', async () => {
      const env = await instanceEnv()
      const p = isolated(env)
      await ready(p)
      expect(p.output()).toContain('embedded Redis at redis://127.0.0.1:6379')
      const dir = path.join(env.DATA_DIR as string, 'redis')
      const pid = Number((await readFile(path.join(dir, 'redis.pid'), 'utf8')).trim())
      expect(alive(pid)).toBe(true)
      expect(existsSync(path.join(dir, 'appendonlydir'))).toBe(true)
      process.kill(-(p.child.pid as number), 'SIGINT')
      expect(await p.exit, p.output()).toEqual({ code: 0, signal: null })
      await waitFor(async () => !alive(pid), 10_000, 'redis-server to stop')
    })

    it('kills its redis-server when npm start itself is killed', async () => {
      const env = await instanceEnv()
      const p = isolated(env)
      await ready(p)
      const pid = Number(
        (await readFile(path.join(env.DATA_DIR as string, 'redis', 'redis.pid'), 'utf8')).trim(),
      )
      expect(alive(pid)).toBe(true)
      p.child.kill('SIGKILL')
      await p.exit
      await waitFor(async () => !alive(pid), 10_000, 'redis-server to go with npm start')
    })
  },
)
