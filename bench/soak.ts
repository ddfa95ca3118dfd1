/**
 * Soak (issue: resource safety): 300 jobs of mixed types and failure modes over 2 GPU hosts (separate
 * processes), with one host killed (kill -9) and restarted twice during the run. Counts final states
 * (must be 300), duplicate final states (must be 0), orphan job processes (must be 0), and the recovery
 * time after each kill (from the kill until every job the dead host held runs again elsewhere).
 */
import { readdir, readFile } from 'node:fs/promises'
import { setTimeout as sleep } from 'node:timers/promises'
import { fileURLToPath } from 'node:url'
import { inArray } from 'drizzle-orm'
import { jobAttempts, jobEvents, jobs } from '../schema/db/tables.ts'
import { type HostProcess, startHostProcess } from '../tests/helpers/host-process.ts'
import { addFixtureJob, startStack } from '../tests/helpers/stack.ts'
import { type BenchResult, fmt, printTable, summarize } from './lib.ts'

const TOTAL = 300

/** The mix: mostly healthy jobs, and every failure mode the fault suite covers. */
const MIX: {
  mode: string
  weight: number
  options: Record<string, number>
  params?: Record<string, unknown>
  expect: string
}[] = [
  {
    mode: 'ok',
    weight: 50,
    options: { maxAttempts: 3 },
    params: { steps: 8, stepMs: 60 },
    expect: 'completed',
  },
  {
    mode: 'throws',
    weight: 10,
    options: { maxAttempts: 3 },
    params: { succeedOnAttempt: 2, steps: 2, stepMs: 10 },
    expect: 'completed',
  },
  { mode: 'throws-non-retryable', weight: 8, options: { maxAttempts: 3 }, expect: 'failed' },
  { mode: 'exits-nonzero', weight: 6, options: { maxAttempts: 2 }, expect: 'failed' },
  { mode: 'crashes-by-signal', weight: 6, options: { maxAttempts: 1 }, expect: 'failed' },
  { mode: 'hangs', weight: 5, options: { maxAttempts: 1, timeoutSec: 1 }, expect: 'failed' },
  {
    mode: 'ok',
    weight: 15,
    options: { maxAttempts: 3 },
    params: { steps: 40, stepMs: 100 },
    expect: 'cancelled',
  },
]

const CHILD_ENTRY = fileURLToPath(new URL('../gpu-host/child.ts', import.meta.url))

/**
 * Live job processes (the child entry of this checkout, whether started for a job or as a warm spare)
 * once every host of the run has stopped: any is an orphan. Read from /proc; run the soak alone.
 */
async function orphanJobProcesses(): Promise<number[]> {
  const pids: number[] = []
  for (const name of await readdir('/proc')) {
    if (!/^\d+$/.test(name)) continue
    const cmdline = await readFile(`/proc/${name}/cmdline`, 'utf8').catch(() => '')
    if (!cmdline.includes(CHILD_ENTRY)) continue
    const stat = await readFile(`/proc/${name}/stat`, 'utf8').catch(() => '')
    if (stat && !['Z', 'X'].includes(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[0] ?? ''))
      pids.push(Number(name))
  }
  return pids
}

export async function soak(): Promise<BenchResult> {
  const stack = await startStack({ withHost: false, env: { RETRY_BACKOFF_MS: '200', KILL_GRACE_SEC: '1' } })
  const hostEnv = { GPU_SLOTS: '2', KILL_GRACE_SEC: '1', SHUTDOWN_GRACE_SEC: '5' }
  const hosts: Record<string, HostProcess> = {
    a: await startHostProcess(stack, 'a', hostEnv),
    b: await startHostProcess(stack, 'b', hostEnv),
  }
  const started = Date.now()
  const expected = new Map<string, string>()
  const plan = MIX.flatMap((m) =>
    Array.from({ length: Math.round((m.weight / 100) * TOTAL) }, () => m),
  ).slice(0, TOTAL)
  while (plan.length < TOTAL) plan.push(MIX[0] as (typeof MIX)[number])
  plan.sort(() => Math.random() - 0.5)
  const toCancel: string[] = []
  for (const m of plan) {
    const jobId = await addFixtureJob(stack, m.mode, m.options, m.params)
    expected.set(jobId, m.expect)
    if (m.expect === 'cancelled') toCancel.push(jobId)
  }
  const ids = [...expected.keys()]
  console.log(`queued ${ids.length} jobs on 2 hosts x 2 slots`)

  const recoveries: number[] = []
  const killAndRestart = async (name: string) => {
    const victim = hosts[name] as HostProcess
    const hostId = `${stack.prefix}-${name}`
    const held = (await stack.database.db.select().from(jobs).where(inArray(jobs.id, ids))).filter(
      (r) => r.status === 'running' && r.host === hostId,
    )
    const killedAt = Date.now()
    victim.proc.kill('SIGKILL')
    await victim.exited
    hosts[name] = await startHostProcess(stack, `${name}${recoveries.length + 2}`, hostEnv)
    // Recovered when every job the dead host held has started a newer attempt (or finished).
    for (;;) {
      const rows = await stack.database.db
        .select()
        .from(jobs)
        .where(inArray(jobs.id, held.map((h) => h.id).concat(['-'])))
      const stuck = rows.filter((r) => {
        const before = held.find((h) => h.id === r.id)
        return (
          before && r.attempt <= before.attempt && !['completed', 'failed', 'cancelled'].includes(r.status)
        )
      })
      if (stuck.length === 0) break
      if (Date.now() - killedAt > 120_000)
        throw new Error(`jobs not recovered: ${stuck.map((s) => s.id).join(', ')}`)
      await sleep(100)
    }
    recoveries.push(Date.now() - killedAt)
    console.log(
      `killed host ${name} holding ${held.length} running jobs; recovered in ${recoveries.at(-1)} ms`,
    )
  }

  let cancelled = 0
  const canceller = (async () => {
    for (const jobId of toCancel) {
      for (;;) {
        const row = (
          await stack.database.db
            .select()
            .from(jobs)
            .where(inArray(jobs.id, [jobId]))
        )[0]
        if (row && row.status === 'running') break
        if (row && ['completed', 'failed', 'cancelled'].includes(row.status)) break
        await sleep(100)
      }
      const res = await fetch(stack.url(`/api/jobs/${jobId}/cancel`), { method: 'POST' })
      if (res.status === 202) cancelled += 1
    }
  })()

  await sleep(8000)
  await killAndRestart('a')
  await sleep(8000)
  await killAndRestart('b')

  const deadline = Date.now() + 600_000
  let finals: (typeof jobs.$inferSelect)[] = []
  for (;;) {
    finals = (await stack.database.db.select().from(jobs).where(inArray(jobs.id, ids))).filter((r) =>
      ['completed', 'failed', 'cancelled'].includes(r.status),
    )
    if (finals.length === ids.length || Date.now() > deadline) break
    await sleep(500)
  }
  await canceller
  const wallSec = (Date.now() - started) / 1000
  const byStatus: Record<string, number> = {}
  for (const r of finals) byStatus[r.status] = (byStatus[r.status] ?? 0) + 1
  const terminalEvents = (
    await stack.database.db.select().from(jobEvents).where(inArray(jobEvents.jobId, ids))
  ).filter((e) => ['completed', 'failed', 'cancelled'].includes(e.status))
  const perJob = new Map<string, number>()
  for (const e of terminalEvents) perJob.set(e.jobId, (perJob.get(e.jobId) ?? 0) + 1)
  const duplicates = [...perJob.values()].filter((n) => n > 1).length
  const unexpected = finals.filter(
    (r) => expected.get(r.id) !== r.status && expected.get(r.id) !== 'cancelled',
  ).length
  const attempts = await stack.database.db.select().from(jobAttempts).where(inArray(jobAttempts.jobId, ids))
  const interrupted = attempts.filter((a) => a.outcome === 'interrupted').length

  for (const h of Object.values(hosts)) {
    h.proc.kill('SIGTERM')
    await h.exited
  }
  // Hosts kill their spares on a clean stop; a killed host's children kill themselves: give them a moment.
  await sleep(1000)
  const orphans = await orphanJobProcesses()
  await stack.close()

  const rec = summarize(recoveries)
  printTable('soak: 300 jobs, 2 hosts, one host killed and restarted twice', [
    ['measure', 'value', 'goal'],
    [
      'jobs ended (completed/failed/cancelled)',
      `${finals.length} (${byStatus.completed ?? 0}/${byStatus.failed ?? 0}/${byStatus.cancelled ?? 0})`,
      '300',
    ],
    ['jobs with more than one final state', duplicates, '0'],
    ['jobs ending unlike their failure mode', unexpected, '0'],
    ['orphan job processes after the run', orphans.length, '0'],
    ['attempts interrupted by the kills', interrupted, ''],
    ['recovery after each kill (ms)', recoveries.join(', '), '< 20000 (lock 10 s + stalled check 5 s)'],
    ['cancel requests accepted', cancelled, ''],
    ['wall time (s)', fmt(wallSec, 1), ''],
  ])
  return {
    name: 'soak',
    issue: 'Resource safety and recovery',
    parameters: {
      jobs: TOTAL,
      hosts: 2,
      slotsPerHost: 2,
      kills: 2,
      mix: MIX.map((m) => ({ mode: m.mode, share: m.weight, expect: m.expect })),
    },
    notes: [
      'GPU hosts are real separate processes on real Redis, Postgres and s3rver; handlers are the fault-suite fixtures (no GPU here).',
      'A host is killed with SIGKILL and a new one started at once; its jobs come back through BullMQ stalled-job detection.',
    ],
    results: {
      ended: finals.length,
      byStatus,
      duplicateFinalStates: duplicates,
      unexpected,
      orphans: orphans.length,
      interruptedAttempts: interrupted,
      recoveryMs: recoveries,
      recovery: rec,
      wallSec,
    },
  }
}
