/**
 * `gpu-jobs hosts` and `gpu-jobs queue`: their tables (aligned in a pipe), --json, usage errors and help,
 * in this process against a whole stack, and the text of a fleet with GPUs and jobs from a fixed body.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { hostsText } from '../../gateway/cli/commands/hosts.ts'
import { queueText } from '../../gateway/cli/commands/queue.ts'
import { EXIT, run } from '../../gateway/cli/main.ts'
import { table } from '../../gateway/cli/table.ts'
import type { HostEntry } from '../../schema/hosts.ts'
import type { QueueBody } from '../../schema/queue.ts'
import { type Stack, startStack, waitFor } from '../helpers/stack.ts'

/** Runs the CLI in this process; stdout and stderr as text (a pipe: no TTY). */
async function cli(url: string, args: string[]) {
  const out: string[] = []
  const err: string[] = []
  const code = await run(args, {
    stdout: { write: (c: string) => out.push(c) },
    stderr: { write: (c: string) => err.push(c) },
    env: { GPU_JOBS_URL: url },
  })
  return { code, out: out.join(''), err: err.join('') }
}

/**
 * That every row has a column break (two blanks) where each left-aligned header starts, and a cell that
 * ends where each right-aligned one (`right`) ends.
 */
function expectAligned(text: string, left: string[], right: string[] = []) {
  const [head = '', ...rows] = text.split('\n')
  for (const row of rows) {
    for (const h of left.slice(1))
      expect(row.slice(head.indexOf(h) - 2, head.indexOf(h)), `${row}: ${h}`).toBe('  ')
    for (const h of right) {
      const end = head.indexOf(h) + h.length
      expect(`${row[end - 1]}${row[end] ?? ' '}`, `${row}: ${h}`).toMatch(/^\S $/)
    }
  }
}

const HOST: HostEntry = {
  hostId: 'gpu-box-1',
  version: '0.1.0',
  pid: 4242,
  startedAt: '2026-01-01T00:00:00.000Z',
  lastSeen: '2026-01-01T01:00:00.000Z',
  intervalMs: 5000,
  closing: false,
  status: 'up',
  lastSeenSec: 2,
  slots: {
    total: 2,
    busy: 2,
    free: 0,
    list: [
      { id: 0, gpu: { index: 0, uuid: 'GPU-a', name: 'NVIDIA H200' }, busy: true },
      { id: 1, gpu: { index: 1, uuid: 'GPU-b', name: 'NVIDIA H200' }, busy: true },
    ],
  },
  gpus: [
    {
      index: 0,
      uuid: 'GPU-a',
      name: 'NVIDIA H200',
      memoryUsedMb: 20_480.4,
      memoryReservedMb: 12_000,
      memoryTotalMb: 143_771,
      utilizationPct: 87,
    },
    {
      index: 1,
      uuid: 'GPU-b',
      name: 'NVIDIA H200',
      memoryUsedMb: 0,
      memoryReservedMb: 0,
      memoryTotalMb: 143_771,
      utilizationPct: null,
    },
  ],
  engines: { train_lora: ['simulate', 'kohya'], train_voice: ['simulate'], render_video: ['simulate'] },
  jobs: [
    {
      jobId: 'lora-1',
      type: 'train_lora',
      attempt: 2,
      startedAt: '2026-01-01T00:58:00.000Z',
      progress: 45.25,
      slot: 0,
    },
    {
      jobId: 'render-2',
      type: 'render_video',
      attempt: 1,
      startedAt: '2026-01-01T00:59:30.000Z',
      progress: 3,
      slot: 1,
    },
  ],
}

describe('the tables', () => {
  it('pads columns by two spaces, numbers right-aligned, no trailing blanks', () => {
    expect(
      table(
        ['STATE', 'JOBS', 'NOTE'],
        [
          ['waiting', '3', ''],
          ['waiting-children', '120', 'x'],
        ],
        ['JOBS'],
      ),
    ).toBe(['STATE             JOBS  NOTE', 'waiting              3', 'waiting-children   120  x'].join('\n'))
  })

  it('shows the hosts, their GPUs and their jobs', () => {
    const text = hostsText(
      [HOST, { ...HOST, hostId: 'b', status: 'gone', jobs: [] }],
      Date.parse(HOST.lastSeen),
    )
    const [hosts, gpus, jobs] = text.split('\n\n')
    expectAligned(hosts ?? '', ['HOST', 'STATUS', 'VERSION', 'SLOTS', 'ENGINES'], ['UP', 'SEEN', 'JOBS'])
    expect(hosts).toContain('gpu-box-1  up      0.1.0')
    expect(hosts).toContain('2/2 busy')
    expect(hosts).toContain('train_lora: simulate, kohya; train_voice: simulate; render_video: simulate')
    expect(hosts?.split('\n')[2]).toMatch(/^b +gone /)
    expectAligned(gpus ?? '', ['HOST', 'NAME'], ['GPU', 'USED', 'RESERVED', 'TOTAL', 'UTIL'])
    expect(gpus).toContain('20480 MiB  12000 MiB  143771 MiB   87%')
    expect(gpus?.split('\n')[2]?.endsWith(' -')).toBe(true)
    expectAligned(jobs ?? '', ['HOST', 'JOB', 'TYPE'], ['ATTEMPT', 'PROGRESS', 'SLOT', 'RUNNING'])
    expect(jobs).toContain('lora-1')
    // Rounded down, like every percentage of the CLI and the console (percentText).
    expect(jobs).toContain('45%')
    expect(jobs).toContain('render-2')
    expect(jobs).toContain('2m 0s')
  })

  it('says so when no host heartbeats', () => {
    expect(hostsText([])).toMatch(/^no GPU host heartbeats/)
  })

  it('shows the queue by state, by type, the oldest waiting and the last hour', () => {
    const q: QueueBody = {
      byState: {
        waiting: 3,
        active: 1,
        delayed: 0,
        failed: 0,
        prioritized: 12,
        completed: 40,
        'waiting-children': 0,
      },
      byType: {
        train_lora: { queued: 3, running: 1, retrying: 0 },
        train_voice: { queued: 12, running: 0, retrying: 2 },
        render_video: { queued: 0, running: 0, retrying: 0 },
      },
      oldestWaitingSec: 75,
      lastHour: { completed: 9, failed: 1 },
    }
    const [states, types, summary] = queueText(q).split('\n\n')
    expect(states).toContain('prioritized         12')
    expect(states?.split('\n')[0]).toMatch(/^BULLMQ STATE +JOBS +HOLDS$/)
    expect(states).toMatch(/\nfailed +0 +cancelled jobs too\n/)
    expectAligned(types ?? '', ['TYPE'], ['QUEUED', 'RUNNING', 'RETRYING'])
    expect(types).toContain('train_voice       12        0         2')
    expect(summary).toBe('oldest waiting  1m 15s\nlast hour       9 completed, 1 failed')
    expect(queueText({ ...q, oldestWaitingSec: null })).toContain('oldest waiting  none waiting')
  })
})

describe('gpu-jobs hosts and queue against a stack', () => {
  let stack: Stack
  let url: string

  beforeAll(async () => {
    stack = await startStack({ heartbeatMs: 100 })
    url = stack.gateway.url
  })
  afterAll(async () => {
    await stack?.close()
  })

  it('hosts: the stack’s host in an aligned table; --json is the API’s body', async () => {
    const shown = await waitFor(
      async () => {
        const r = await cli(url, ['hosts'])
        return r.code === EXIT.ok && r.out.includes(stack.config.hostId) ? r : null
      },
      5000,
      'the host in gpu-jobs hosts',
    )
    expect(shown.err).toBe('')
    const table = shown.out.trimEnd().split('\n\n')[0] ?? ''
    expectAligned(table, ['HOST', 'STATUS', 'VERSION', 'SLOTS', 'ENGINES'], ['UP', 'SEEN', 'JOBS'])
    expect(table.split('\n')[1]).toMatch(new RegExp(`^${stack.config.hostId} +up +0\\.1\\.0 `))
    const json = await cli(url, ['hosts', '--json'])
    expect(json.code).toBe(EXIT.ok)
    const body = JSON.parse(json.out) as { hosts: HostEntry[] }
    expect(body.hosts.map((h) => h.hostId)).toContain(stack.config.hostId)
  })

  it('queue: the counts as tables; --json is the API’s body', async () => {
    const r = await cli(url, ['queue'])
    expect(r.code).toBe(EXIT.ok)
    expect(r.out).toMatch(/^BULLMQ STATE +JOBS +HOLDS\nwaiting +\d+\n/)
    expect(r.out).toMatch(/\nTYPE +QUEUED +RUNNING +RETRYING\ntrain_lora +\d+ +\d+ +\d+\n/)
    expect(r.out).toMatch(/\nlast hour {7}\d+ completed, \d+ failed\n$/)
    const json = await cli(url, ['queue', '--json'])
    expect(Object.keys(JSON.parse(json.out) as QueueBody)).toEqual(
      expect.arrayContaining(['byState', 'byType', 'oldestWaitingSec', 'lastHour']),
    )
  })

  it('refuses an argument once, with the command’s help to run; --help and help <command> print usage', async () => {
    for (const command of ['hosts', 'queue']) {
      const bad = await cli(url, [command, 'extra'])
      expect(bad.code).toBe(EXIT.error)
      expect(bad.out).toBe('')
      expect(bad.err).toBe(`error: unexpected argument "extra"\nrun "gpu-jobs ${command} --help" for usage\n`)
      expect((await cli(url, [command, '--help'])).out).toMatch(
        new RegExp(`^Usage: gpu-jobs ${command} \\[--json\\]`),
      )
      expect((await cli(url, ['help', command])).out).toMatch(new RegExp(`^Usage: gpu-jobs ${command} `))
    }
    const main = await cli(url, ['--help'])
    expect(main.out).toMatch(/\n {2}hosts {11}the GPU hosts/)
    expect(main.out).toMatch(/\n {2}queue {11}queue depth/)
  })

  it('says once that the gateway cannot be reached', async () => {
    const r = await cli('http://127.0.0.1:1', ['hosts'])
    expect(r.code).toBe(EXIT.error)
    expect(r.err.match(/error:/g)).toHaveLength(1)
    expect(r.err).toContain('cannot reach the gateway')
  })
})
