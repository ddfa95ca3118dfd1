/**
 * Job processes never see the host's credentials: a GPU host process configured with distinctive fake
 * secrets runs a job, and the environment of the running job process and of the warm spare beside it,
 * read from /proc/<pid>/environ, holds none of them. The job's artifacts still land with the right sha256
 * (they go through the host, which holds the S3 credentials).
 */
import { createHash } from 'node:crypto'
import { readdir, readFile, writeFile } from 'node:fs/promises'
import path from 'node:path'
import { GetObjectCommand } from '@aws-sdk/client-s3'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { HOST_CREDENTIALS } from '../../gpu-host/child-env.ts'
import { type HostProcess, startHostProcess } from '../helpers/host-process.ts'
import {
  addFixtureJob,
  type Stack,
  startStack,
  TEST_DATABASE_URL,
  TEST_REDIS_URL,
  waitFor,
} from '../helpers/stack.ts'
import { runningJobPid } from './running-job.ts'

/** Distinctive values: any of them in a job's environment is a leak. */
const SECRETS = {
  pgPassword: 'FAKE-PG-PASSWORD-q8Zr2',
  redisPassword: 'FAKE-REDIS-PASSWORD-w3Xk9',
  apiToken: 'FAKE-API-TOKEN-m4Vt7pLq',
  metricsToken: 'FAKE-METRICS-TOKEN-h6Jd1',
  s3Secret: 'FAKE-S3-SECRET-ACCESS-KEY-c5Nb8',
  fileSecret: 'FAKE-SECRET-FROM-FILE-r2Gy4',
}

let stack: Stack
let host: HostProcess | undefined
let secretFile = ''

beforeAll(async () => {
  stack = await startStack({ withHost: false })
  secretFile = path.join(stack.dataDir, 'metrics-token.secret')
  await writeFile(secretFile, SECRETS.fileSecret)
  const withPassword = (url: string, password: string) => {
    const u = new URL(url)
    u.password = password
    return u.toString()
  }
  // Postgres (trust auth) and Redis (no requirepass) accept any password; s3rver does not check v4 signatures.
  host = await startHostProcess(stack, 'env', {
    DATABASE_URL: withPassword(TEST_DATABASE_URL, SECRETS.pgPassword),
    REDIS_URL: withPassword(TEST_REDIS_URL, SECRETS.redisPassword),
    API_TOKENS: `ci:${SECRETS.apiToken}`,
    METRICS_TOKEN_FILE: secretFile,
    S3_ACCESS_KEY_ID: 'S3RVER',
    S3_SECRET_ACCESS_KEY: SECRETS.s3Secret,
    GPU_SLOTS: '2',
  })
}, 60_000)

afterAll(async () => {
  if (host && host.proc.exitCode === null) {
    host.proc.kill('SIGTERM')
    await host.exited
  }
  await stack?.close()
})

async function environOf(pid: number): Promise<Map<string, string>> {
  const raw = await readFile(`/proc/${pid}/environ`, 'utf8')
  return new Map(
    raw
      .split('\0')
      .filter(Boolean)
      .map((kv) => {
        const eq = kv.indexOf('=')
        return [kv.slice(0, eq), kv.slice(eq + 1)] as [string, string]
      }),
  )
}

/** Job processes the host forked: direct children of `ppid` that lead their own process group. */
async function jobProcessesOf(ppid: number): Promise<number[]> {
  const pids: number[] = []
  for (const name of await readdir('/proc')) {
    if (!/^\d+$/.test(name)) continue
    const stat = await readFile(`/proc/${name}/stat`, 'utf8').catch(() => '')
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
    // (esbuild's service, which tsx starts, is a child too, in the host's own group.)
    if (Number(fields[1]) === ppid && Number(fields[2]) === Number(name) && fields[0] !== 'Z')
      pids.push(Number(name))
  }
  return pids
}

function expectNoSecrets(env: Map<string, string>, what: string): void {
  const joined = [...env].map(([k, val]) => `${k}=${val}`).join('\n')
  for (const [name, value] of Object.entries(SECRETS))
    expect(joined.includes(value), `${what}: the ${name} leaked into its environment`).toBe(false)
  // Pinned name by name in gpu-host/child-env.test.ts.
  for (const name of HOST_CREDENTIALS) expect(env.has(name), `${what}: ${name} is set`).toBe(false)
  expect(
    [...env.keys()].filter((k) => k.endsWith('_FILE')),
    `${what}: *_FILE variables`,
  ).toEqual([])
  expect(joined.includes(secretFile), `${what}: the secret file's path is visible`).toBe(false)
  // What a job does need is there.
  expect(env.get('PATH'), `${what}: PATH`).toBeTruthy()
}

describe('the environment of job processes', () => {
  it('a running job process and a warm spare hold none of the host secrets; artifacts still land intact', async () => {
    const h = host as HostProcess
    const jobId = await addFixtureJob(stack, 'ok', { maxAttempts: 1 }, { steps: 60, stepMs: 100 })
    const jobPid = await runningJobPid(stack, jobId, 0, 'job to run')
    // The host itself does hold them (the test's premise).
    expect([...(await environOf(h.pid)).values()].join('\n')).toContain(SECRETS.s3Secret)

    expectNoSecrets(await environOf(jobPid), 'the running job process')
    // GPU_SLOTS=2: the idle slot keeps a warm spare, forked with the same environment rule.
    const spares = await waitFor(
      async () => {
        const pids = (await jobProcessesOf(h.pid)).filter((p) => p !== jobPid)
        return pids.length > 0 ? pids : null
      },
      10_000,
      'a warm spare',
    )
    for (const pid of spares) expectNoSecrets(await environOf(pid), `the warm spare ${pid}`)

    const body = await stack.waitStatus(jobId, ['completed', 'failed'], 30_000)
    expect(body.status).toBe('completed')
    expect(body.artifacts.map((a) => a.path).sort()).toEqual(['attempt-1.txt', 'out.txt'])
    for (const a of body.artifacts) {
      const obj = await stack.s3.client.send(
        new GetObjectCommand({ Bucket: stack.config.s3.bucket, Key: a.key }),
      )
      const bytes = Buffer.from(await (obj.Body?.transformToByteArray() ?? new Uint8Array()))
      expect(createHash('sha256').update(bytes).digest('hex')).toBe(a.sha256)
      expect(bytes.length).toBe(a.size)
    }
  }, 60_000)
})
