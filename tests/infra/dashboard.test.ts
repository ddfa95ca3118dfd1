import { describe, expect, it } from 'vitest'
import {
  allPanels,
  type Dashboard,
  isKnownMetric,
  loadDashboard,
  metricNames,
  panelQueries,
  provisionedDatasourceUid,
  recordingRuleNames,
  substituteVariables,
  variableQuery,
  variableRefs,
} from './dashboard-queries.ts'

const dashboard: Dashboard = loadDashboard()
const panels = allPanels(dashboard)
const datasourceUid = provisionedDatasourceUid()
const recordingRules = recordingRuleNames()
const variableNames = new Set(dashboard.templating.list.map((variable) => variable.name))

describe('GPU Job Metrics dashboard', () => {
  it('has the provisioned identity', () => {
    expect(dashboard.title).toBe('GPU Job Metrics')
    expect(dashboard.uid).toBe('gpu-job-metrics')
    expect(dashboard.schemaVersion).toBe(39)
    expect(datasourceUid).toBe('prometheus-gpu')
  })

  it('defines host, gpu and type as multi-value variables with All', () => {
    for (const name of ['host', 'gpu', 'type']) {
      const variable = dashboard.templating.list.find((v) => v.name === name)
      expect(variable, name).toBeDefined()
      expect(variable?.multi, name).toBe(true)
      expect(variable?.includeAll, name).toBe(true)
      expect(variable?.datasource?.uid, name).toBe(datasourceUid)
    }
  })

  it('queries known metrics in its variables', () => {
    for (const variable of dashboard.templating.list.filter((v) => v.type === 'query')) {
      const match = /^label_values\(\s*([\w:]+)\s*,\s*\w+\s*\)$/.exec(variableQuery(variable).trim())
      expect(match, `${variable.name}: ${variableQuery(variable)}`).not.toBeNull()
      expect(isKnownMetric(match?.[1] ?? '', recordingRules), variable.name).toBe(true)
    }
  })

  it('has unique panel ids', () => {
    const ids = panels.map((panel) => panel.id)
    expect(ids.every((id) => Number.isInteger(id) && id > 0)).toBe(true)
    expect(new Set(ids).size).toBe(ids.length)
  })

  it('places every panel inside 24 columns without overlaps', () => {
    for (const { id, gridPos: g } of panels) {
      for (const value of [g.x, g.y, g.w, g.h]) expect(Number.isInteger(value), `panel ${id}`).toBe(true)
      expect(g.x, `panel ${id}`).toBeGreaterThanOrEqual(0)
      expect(g.y, `panel ${id}`).toBeGreaterThanOrEqual(0)
      expect(g.w, `panel ${id}`).toBeGreaterThanOrEqual(1)
      expect(g.h, `panel ${id}`).toBeGreaterThanOrEqual(1)
      expect(g.x + g.w, `panel ${id}`).toBeLessThanOrEqual(24)
    }
    const overlaps: string[] = []
    for (const [i, a] of panels.entries()) {
      for (const b of panels.slice(i + 1)) {
        const p = a.gridPos
        const q = b.gridPos
        if (p.x < q.x + q.w && q.x < p.x + p.w && p.y < q.y + q.h && q.y < p.y + p.h) {
          overlaps.push(`${a.id} "${a.title}" / ${b.id} "${b.title}"`)
        }
      }
    }
    expect(overlaps).toEqual([])
  })

  it('uses the provisioned datasource on every panel and target', () => {
    const wrong: string[] = []
    for (const panel of panels) {
      if (panel.type === 'row') continue
      if (panel.datasource?.uid !== datasourceUid) wrong.push(`panel ${panel.id}`)
      expect(panel.targets?.length ?? 0, `panel ${panel.id} has no target`).toBeGreaterThan(0)
      for (const target of panel.targets ?? []) {
        if (target.datasource?.uid !== datasourceUid) wrong.push(`panel ${panel.id} target ${target.refId}`)
      }
    }
    expect(wrong).toEqual([])
  })

  it('has unique refIds within each panel', () => {
    for (const panel of panels) {
      const refIds = (panel.targets ?? []).map((target) => target.refId)
      expect(new Set(refIds).size, `panel ${panel.id}`).toBe(refIds.length)
    }
  })

  it('defines every template variable its queries use', () => {
    const undefinedRefs = panelQueries({}).flatMap((query) =>
      variableRefs(query.raw)
        .filter((name) => !name.startsWith('__') && !variableNames.has(name))
        .map((name) => `panel ${query.panelId} ${query.refId}: $${name}`),
    )
    expect(undefinedRefs).toEqual([])
  })

  it('queries only known metrics, DCGM series, ALERTS or recording rules', () => {
    const unknown = panelQueries().flatMap((query) =>
      metricNames(query.raw)
        .filter((name) => !isKnownMetric(name, recordingRules))
        .map((name) => `panel ${query.panelId} ${query.refId}: ${name}`),
    )
    expect(unknown).toEqual([])
    const used = new Set(panelQueries().flatMap((query) => metricNames(query.raw)))
    expect(
      [...used].some((name) => recordingRules.has(name)),
      'uses recording rules',
    ).toBe(true)
  })

  it('covers the panels the issue asks for', () => {
    const exprs = panelQueries().map((query) => query.expr)
    const uses = (name: string) => exprs.some((expr) => metricNames(expr).includes(name))
    for (const name of [
      'instance_type_status:gpu_worker_jobs:rate5m',
      'instance_type_status_le:gpu_worker_job_duration_seconds_bucket:rate1h',
      'instance_type_reason:gpu_worker_job_errors:rate5m',
      'gpu_worker_jobs_running',
      'state:gpu_worker_queue_jobs:max',
      'instance_type_le:gpu_worker_queue_wait_seconds_bucket:rate5m',
      'gpu_worker_progress_percent',
      'instance_gpu:dcgm_fb_used_bytes:max',
      'gpu_worker_gpu_memory_used_bytes',
      'DCGM_FI_DEV_GPU_UTIL',
      'gpu_worker_running_jobs_per_gpu',
      'gpu_worker_gpu_memory_reserved_bytes',
      'gpu_worker_gpu_memory_free_bytes',
      'instance_type:gpu_worker_retries:rate5m',
      'instance_type:gpu_worker_timeouts:rate5m',
      'instance_type:gpu_worker_cancellations:rate5m',
      'ALERTS',
    ]) {
      expect(uses(name), name).toBe(true)
    }
    const utilisation = panels.find((panel) =>
      panel.targets?.some((target) => target.expr?.includes('DCGM_FI_DEV_GPU_UTIL')),
    )
    expect(utilisation?.targets?.some((t) => t.expr?.includes('gpu_worker_running_jobs_per_gpu'))).toBe(true)
    // Reserved and free VRAM per GPU sit beside the memory panels, filtered by the same variables.
    const vram = panels.find((panel) =>
      panel.targets?.some((target) => target.expr?.includes('gpu_worker_gpu_memory_reserved_bytes')),
    )
    const used = panels.find((panel) => panel.title === 'VRAM used per GPU')
    expect(vram?.targets?.some((t) => t.expr?.includes('gpu_worker_gpu_memory_free_bytes'))).toBe(true)
    expect(vram?.gridPos.y).toBe((used?.gridPos.y ?? 0) + (used?.gridPos.h ?? 0))
    for (const t of vram?.targets ?? []) expect(variableRefs(t.expr ?? '').sort()).toEqual(['gpu', 'host'])
  })

  it('leaves no template variable after substitution', () => {
    for (const query of panelQueries()) expect(query.expr, `panel ${query.panelId}`).not.toMatch(/\$|\[\[/)
    expect(
      // biome-ignore lint/suspicious/noTemplateCurlyInString: Grafana's ${var} syntax, not a JS template
      substituteVariables('rate(x{t=~"${type:regex}"}[$__rate_interval]) [[gpu]]', { type: 'a', gpu: 'b' }),
    ).toBe('rate(x{t=~"a"}[$__rate_interval]) b')
  })
})

describe('metricNames', () => {
  it('skips functions, keywords, label names, strings and durations', () => {
    expect(
      metricNames(
        'histogram_quantile(0.95, sum by (type, le) (rate(a_bucket{x="y{z}"}[5m] offset 1h))) ' +
          '/ on (gpu, UUID) group_left (Hostname) b:c:d > bool 1e3 or vector(0) unless c',
      ),
    ).toEqual(['a_bucket', 'b:c:d', 'c'])
  })
})
