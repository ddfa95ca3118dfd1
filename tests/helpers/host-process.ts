import { type ChildProcess, spawn } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import type { Stack } from './stack.ts'

const HOST_ENTRY = fileURLToPath(new URL('../fixtures/host-process.ts', import.meta.url))

export interface HostProcess {
  proc: ChildProcess
  pid: number
  metricsPort: number
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>
  output: () => string
}

/** A real GPU host in its own process, on the stack's Redis, Postgres, S3 and queue prefix. */
export async function startHostProcess(
  stack: Stack,
  name: string,
  env: Record<string, string> = {},
): Promise<HostProcess> {
  const proc = spawn(process.execPath, ['--import', 'tsx', HOST_ENTRY], {
    env: {
      ...process.env,
      REDIS_URL: stack.config.redisUrl,
      DATABASE_URL: stack.config.databaseUrl,
      S3_ENDPOINT: stack.config.s3.endpoint,
      S3_BUCKET: stack.config.s3.bucket,
      QUEUE_PREFIX: stack.config.queuePrefix,
      DATA_DIR: stack.dataDir,
      METRICS_PORT: '0',
      KILL_GRACE_SEC: '1',
      RETRY_BACKOFF_MS: '200',
      HOST_ID: `${stack.prefix}-${name}`,
      LOG_LEVEL: 'warn',
      ...env,
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  let out = ''
  proc.stderr?.on('data', (d: Buffer) => {
    out += d.toString()
  })
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    proc.on('exit', (code, signal) => resolve({ code, signal })),
  )
  const metricsPort = await new Promise<number>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`host ${name} did not start: ${out}`)), 30_000)
    proc.stdout?.on('data', (d: Buffer) => {
      out += d.toString()
      const m = out.match(/READY (\d+)/)
      if (m) {
        clearTimeout(timer)
        resolve(Number(m[1]))
      }
    })
    void exited.then(() => reject(new Error(`host ${name} exited before it was ready: ${out}`)))
  })
  return { proc, pid: proc.pid ?? 0, metricsPort, exited, output: () => out }
}
