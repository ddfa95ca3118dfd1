import type { HostEntry, HostsBody } from '../../../schema/hosts.ts'
import { percentText } from '../../console/stream.js'
import { duration } from '../render.ts'
import { table } from '../table.ts'
import { viewCommand } from '../view.ts'

const engines = (h: HostEntry): string =>
  Object.entries(h.engines)
    .map(([type, list]) => `${type}: ${list.join(', ')}`)
    .join('; ')

const mb = (n: number): string => `${Math.round(n)} MiB`

/** A table of `items`, one row each, or nothing when there are none. */
const section = <T>(items: T[], header: string[], row: (item: T) => string[], right: string[]): string[] =>
  items.length === 0 ? [] : [table(header, items.map(row), right)]

/** The three tables of `gpu-jobs hosts`: the hosts, their GPUs, the jobs they run (the last two when any). */
export function hostsText(hosts: HostEntry[], now = Date.now()): string {
  if (hosts.length === 0)
    return 'no GPU host heartbeats on this gateway’s queue (start one: npm run gpu-host)'
  const since = (iso: string) => duration(now - Date.parse(iso))
  return [
    ...section(
      hosts,
      ['HOST', 'STATUS', 'VERSION', 'UP', 'SEEN', 'SLOTS', 'JOBS', 'ENGINES'],
      (h) => [
        h.hostId,
        h.status,
        h.version,
        since(h.startedAt),
        `${duration(h.lastSeenSec * 1000)} ago`,
        `${h.slots.busy}/${h.slots.total} busy`,
        String(h.jobs.length),
        engines(h),
      ],
      ['UP', 'SEEN', 'JOBS'],
    ),
    ...section(
      hosts.flatMap((h) => h.gpus.map((g) => ({ host: h.hostId, ...g }))),
      ['HOST', 'GPU', 'NAME', 'USED', 'RESERVED', 'TOTAL', 'UTIL'],
      (g) => [
        g.host,
        String(g.index),
        g.name,
        mb(g.memoryUsedMb),
        mb(g.memoryReservedMb),
        mb(g.memoryTotalMb),
        g.utilizationPct === null ? '-' : percentText(g.utilizationPct),
      ],
      ['GPU', 'USED', 'RESERVED', 'TOTAL', 'UTIL'],
    ),
    ...section(
      hosts.flatMap((h) => h.jobs.map((j) => ({ host: h.hostId, ...j }))),
      ['HOST', 'JOB', 'TYPE', 'ATTEMPT', 'PROGRESS', 'SLOT', 'RUNNING'],
      (j) => [
        j.host,
        j.jobId,
        j.type,
        j.attempt === null ? '-' : String(j.attempt),
        // A running job: never 100% until it has completed (percentText).
        percentText(j.progress, 'running'),
        j.slot === null ? '-' : String(j.slot),
        j.startedAt ? since(j.startedAt) : 'waiting',
      ],
      ['ATTEMPT', 'PROGRESS', 'SLOT', 'RUNNING'],
    ),
  ].join('\n\n')
}

/** `gpu-jobs hosts [--json]`: the GPU hosts that heartbeat, their GPUs and running jobs. */
export const hosts = viewCommand<HostsBody>('hosts', 'api/hosts', (body) => hostsText(body.hosts))
