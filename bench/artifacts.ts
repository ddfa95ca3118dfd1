/**
 * artifacts: a 1 GiB file through a handler (`ctx.artifacts.put({ file })`, which the GPU host streams to
 * S3) to the S3 server, against `aws s3 cp` of the same file to the same server and the AWS SDK's own
 * multipart `Upload` straight from this process, in interleaved rounds; with the host's and the job
 * process's RSS growth (goal: under 150 MB).
 */
import { execFile, spawn } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { createReadStream } from 'node:fs'
import { mkdtemp, open, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { promisify } from 'node:util'
import { DeleteObjectCommand } from '@aws-sdk/client-s3'
import { Upload } from '@aws-sdk/lib-storage'
import { startHostProcess } from '../tests/helpers/host-process.ts'
import { addFixtureJob, startStack } from '../tests/helpers/stack.ts'
import { MiB, rssOf, sampleRss } from './jobs.ts'
import { type BenchResult, clock, machineLoad, printTable, ratio } from './lib.ts'

/** `aws --version`, or null with the reason when the CLI is not there. */
async function awsCli(): Promise<{ version: string } | { missing: string }> {
  try {
    const { stdout, stderr } = await promisify(execFile)('aws', ['--version'])
    return { version: (stdout || stderr).trim() }
  } catch (err) {
    return { missing: `aws CLI not usable: ${(err as Error).message.split('\n')[0]}` }
  }
}

/** Writes `bytes` of incompressible data (one random 16 MiB block repeated). */
async function makeFile(file: string, bytes: number): Promise<void> {
  const block = randomBytes(16 * MiB)
  const fh = await open(file, 'w')
  try {
    for (let written = 0; written < bytes; written += block.length)
      await fh.write(block, 0, Math.min(block.length, bytes - written))
  } finally {
    await fh.close()
  }
}

const mbps = (bytes: number, ms: number): number => bytes / MiB / (ms / 1000)

export async function artifacts({ quick }: { quick: boolean }): Promise<BenchResult> {
  const bytes = quick ? 32 * MiB : 1024 * MiB
  const rounds = quick ? 1 : 2
  const aws = await awsCli()
  if ('missing' in aws) console.log(`artifacts: ${aws.missing}; the aws s3 cp baseline is skipped`)
  const dir = await mkdtemp(path.join(tmpdir(), 'bench-artifacts-'))
  const file = path.join(dir, 'big.bin')
  await makeFile(file, bytes)
  const stack = await startStack({ withHost: false })
  const host = await startHostProcess(stack, 'artifacts', { GPU_SLOTS: '1', SHUTDOWN_GRACE_SEC: '1' })
  const bucket = stack.config.s3.bucket
  const s3 = stack.s3.client
  const removeKeys = async (prefix: string) => {
    for (const key of await stack.keysUnder(prefix))
      await s3.send(new DeleteObjectCommand({ Bucket: bucket, Key: key })).catch(() => {})
  }
  const out = {
    ours: [] as { ms: number; hostRssGrowthMiB: number; jobRssGrowthMiB: number; jobMaxRssMiB: number }[],
    aws: [] as number[],
    sdk: [] as number[],
  }
  let hostRssAtStart = Number.NaN
  const machine = machineLoad()
  try {
    hostRssAtStart = await rssOf(host.pid)
    const oursRound = async (r: number) => {
      const rssBefore = await rssOf(host.pid)
      const sampler = sampleRss(host.pid, 100)
      const jobId = await addFixtureJob(
        stack,
        'writes-big-artifact',
        { timeoutSec: 3600, maxAttempts: 1 },
        {
          file,
          path: `big-${r}.bin`,
        },
      )
      const status = await stack.waitStatus(jobId, ['completed', 'failed', 'cancelled'], 1_800_000)
      const samples = await sampler.stop()
      const result = status.result as {
        putMs: number
        rssBeforeBytes: number
        maxRssBytes: number
        size: number
      } | null
      if (status.status !== 'completed' || !result || result.size !== bytes)
        throw new Error(`job ${jobId} ended ${status.status}: ${JSON.stringify(status.error ?? result)}`)
      out.ours.push({
        ms: result.putMs,
        hostRssGrowthMiB: (Math.max(...samples) - rssBefore) / MiB,
        jobRssGrowthMiB: (result.maxRssBytes - result.rssBeforeBytes) / MiB,
        jobMaxRssMiB: result.maxRssBytes / MiB,
      })
      await removeKeys(`loras/${jobId}`)
    }
    const awsRound = async (r: number) => {
      const key = `aws/${r}.bin`
      const t0 = clock()
      const code = await new Promise<number | null>((resolve) => {
        const p = spawn(
          'aws',
          [
            '--endpoint-url',
            stack.s3.endpoint,
            's3',
            'cp',
            '--only-show-errors',
            file,
            `s3://${bucket}/${key}`,
          ],
          {
            env: {
              ...process.env,
              AWS_ACCESS_KEY_ID: stack.config.s3.accessKeyId,
              AWS_SECRET_ACCESS_KEY: stack.config.s3.secretAccessKey,
              AWS_DEFAULT_REGION: stack.config.s3.region,
            },
            stdio: ['ignore', 'inherit', 'inherit'],
          },
        )
        p.on('exit', resolve)
      })
      if (code !== 0) throw new Error(`aws s3 cp exited ${code}`)
      out.aws.push(clock() - t0)
      await s3.send(new DeleteObjectCommand({ Bucket: bucket, Key: key }))
    }
    const sdkRound = async (r: number) => {
      const key = `sdk/${r}.bin`
      const t0 = clock()
      await new Upload({
        client: s3,
        params: { Bucket: bucket, Key: key, Body: createReadStream(file) },
      }).done()
      out.sdk.push(clock() - t0)
      await s3.send(new DeleteObjectCommand({ Bucket: bucket, Key: key }))
    }
    for (let r = 0; r < rounds; r++) {
      const sides = [oursRound, ...('missing' in aws ? [] : [awsRound]), sdkRound]
      if (r % 2 === 1) sides.reverse()
      for (const side of sides) await side(r)
    }
  } finally {
    host.proc.kill('SIGTERM')
    await host.exited
    await stack.close()
    await rm(dir, { recursive: true, force: true })
  }
  const busy = machine.busyPercent()
  const best = (xs: number[]) => (xs.length ? Math.min(...xs) : Number.NaN)
  const oursMs = best(out.ours.map((o) => o.ms))
  const awsMs = best(out.aws)
  const sdkMs = best(out.sdk)
  const hostGrowth = Math.max(...out.ours.map((o) => o.hostRssGrowthMiB))
  const jobGrowth = Math.max(...out.ours.map((o) => o.jobRssGrowthMiB))
  const r1 = (n: number) => Math.round(n * 10) / 10
  printTable(`artifacts: ${bytes / MiB} MiB to s3rver (fastest of ${rounds} round(s))`, [
    ['method', 'seconds', 'MiB/s', 'ours / it (goal >= 0.8 vs aws)'],
    ['ours: ctx.artifacts.put({ file }) -> host -> S3', oursMs / 1000, mbps(bytes, oursMs), ''],
    'missing' in aws
      ? ['aws s3 cp (awscli)', `skipped: ${aws.missing}`, '', '']
      : [
          'aws s3 cp (awscli)',
          awsMs / 1000,
          mbps(bytes, awsMs),
          ratio(mbps(bytes, oursMs), mbps(bytes, awsMs)),
        ],
    [
      'AWS SDK Upload from this process',
      sdkMs / 1000,
      mbps(bytes, sdkMs),
      ratio(mbps(bytes, oursMs), mbps(bytes, sdkMs)),
    ],
  ])
  console.log(
    `RSS growth during the upload: host ${r1(hostGrowth)} MiB (from ${r1(hostRssAtStart / MiB)} MiB), job process ${r1(jobGrowth)} MiB (goal: under 150 MB each)`,
  )
  console.log(`(load average at start ${machine.loadAverage1mAtStart}, machine CPU busy ${busy}% meanwhile)`)
  return {
    name: 'artifacts',
    issue: 'benchmark suite 3: a 1 GiB artifact through a handler to S3 against aws s3 cp',
    parameters: { bytes, rounds, awsCli: 'missing' in aws ? aws.missing : aws.version },
    notes: [
      'Ours: a GPU host in its own process (tests/fixtures/host-process.ts), the fixture tests/fixtures/handlers/writes-big-artifact.ts hard-links the file into its scratch dir and calls ctx.artifacts.put({ file }); the host streams it to S3. Time = the put call in the job process.',
      "S3 server: s3rver in the benchmark process (as in the tests), the same server and bucket for every method. Host RSS: VmRSS every 100 ms, max minus the value before the job; job RSS: the job process's maxRSS minus its RSS before the put.",
      'Baselines: `aws s3 cp` (Debian/pip awscli, its default multipart settings) of the same file, process start included; the AWS SDK v3 lib-storage Upload from a file stream in this process (shows what the server itself takes).',
      'Rounds alternate the order; the figure is the fastest round of each method.',
    ],
    results: {
      seconds: { ours: oursMs / 1000, awsCli: awsMs / 1000, sdkUpload: sdkMs / 1000 },
      mibPerSecond: {
        ours: r1(mbps(bytes, oursMs)),
        awsCli: r1(mbps(bytes, awsMs)),
        sdkUpload: r1(mbps(bytes, sdkMs)),
      },
      ratios: {
        oursOverAwsCli: Math.round(ratio(awsMs, oursMs) * 100) / 100,
        oursOverSdkUpload: Math.round(ratio(sdkMs, oursMs) * 100) / 100,
      },
      rssMiB: {
        hostAtStart: r1(hostRssAtStart / MiB),
        hostGrowth: r1(hostGrowth),
        jobGrowth: r1(jobGrowth),
        rounds: out.ours,
      },
      roundsMs: { awsCli: out.aws, sdkUpload: out.sdk },
      awsSkipped: 'missing' in aws ? aws.missing : null,
      machineLoad: { loadAverage1mAtStart: machine.loadAverage1mAtStart, machineCpuBusyPercent: busy },
    },
  }
}
