/**
 * Readers for the observability files under `infra/`: the Grafana dashboard, its provisioned datasource
 * and the Prometheus rules. No YAML dependency: the rule files are read with a small line parser that
 * understands the subset they use (list items, `key: value`, `|`/`>` block scalars).
 *
 * A live test can evaluate every expression against a real Prometheus:
 * @example
 * for (const q of panelQueries()) await fetch(`${prom}/api/v1/query?query=${encodeURIComponent(q.expr)}`)
 * for (const r of recordingRuleExpressions()) await fetch(`${prom}/api/v1/query?query=${encodeURIComponent(r.expr)}`)
 */
import { readdirSync, readFileSync } from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

export const REPO_ROOT = fileURLToPath(new URL('../../', import.meta.url))
export const PROMETHEUS_DIR = path.join(REPO_ROOT, 'infra/prometheus')
export const PROMETHEUS_CONFIG = path.join(PROMETHEUS_DIR, 'prometheus.yml')
export const RULES_DIR = path.join(PROMETHEUS_DIR, 'rules')
export const RULE_TESTS_DIR = path.join(PROMETHEUS_DIR, 'tests')
export const DASHBOARDS_DIR = path.join(REPO_ROOT, 'infra/grafana/dashboards')
export const DASHBOARD_PATH = path.join(DASHBOARDS_DIR, 'gpu-job-metrics.json')
export const DATASOURCE_PROVISIONING_PATH = path.join(
  REPO_ROOT,
  'infra/grafana/provisioning/datasources/prometheus.yml',
)

/** Values that make every query select everything: `All` for each variable, Grafana's intervals. */
export const DEFAULT_VARIABLE_VALUES: Readonly<Record<string, string>> = {
  host: '.*',
  gpu: '.*',
  type: '.*',
  __rate_interval: '1m',
  __interval: '15s',
  __range: '1h',
}

export interface Datasource {
  type?: string
  uid?: string
}

export interface Target {
  refId: string
  expr?: string
  datasource?: Datasource
  legendFormat?: string
  instant?: boolean
  range?: boolean
}

export interface GridPos {
  x: number
  y: number
  w: number
  h: number
}

export interface Panel {
  id: number
  type: string
  title: string
  gridPos: GridPos
  datasource?: Datasource
  targets?: Target[]
  panels?: Panel[]
}

export interface TemplateVariable {
  name: string
  type: string
  datasource?: Datasource
  definition?: string
  query?: string | { query?: string }
  multi?: boolean
  includeAll?: boolean
  allValue?: string
}

export interface Dashboard {
  uid: string
  title: string
  schemaVersion: number
  panels: Panel[]
  templating: { list: TemplateVariable[] }
}

export function loadDashboard(file: string = DASHBOARD_PATH): Dashboard {
  return JSON.parse(readFileSync(file, 'utf8')) as Dashboard
}

/** Every panel, including those nested in collapsed rows. */
export function allPanels(dashboard: Dashboard): Panel[] {
  return dashboard.panels.flatMap((panel) => [panel, ...(panel.panels ?? [])])
}

/** The query string of a templating variable (string form or the editor's object form). */
export function variableQuery(variable: TemplateVariable): string {
  if (typeof variable.query === 'string') return variable.query
  return variable.query?.query ?? variable.definition ?? ''
}

const VARIABLE_REF = /\$\{(\w+)(?::[\w-]+)?\}|\[\[(\w+)(?::[\w-]+)?\]\]|\$(\w+)/g

/** Names of the template variables an expression uses (`$x`, `${x}`, `${x:regex}`, `[[x]]`). */
export function variableRefs(expr: string): string[] {
  return [...new Set([...expr.matchAll(VARIABLE_REF)].map((m) => (m[1] ?? m[2] ?? m[3]) as string))]
}

/**
 * Replaces template variables with values; unknown variables are left as they are.
 * @example substituteVariables('rate(x{type=~"$type"}[$__rate_interval])', { type: '.*', __rate_interval: '1m' })
 */
export function substituteVariables(expr: string, values: Readonly<Record<string, string>>): string {
  return expr.replace(VARIABLE_REF, (whole, a?: string, b?: string, c?: string) => {
    const name = (a ?? b ?? c) as string
    return Object.hasOwn(values, name) ? (values[name] as string) : whole
  })
}

export interface PanelQuery {
  panelId: number
  panelTitle: string
  refId: string
  instant: boolean
  /** The expression with template variables substituted. */
  expr: string
  /** The expression as written in the dashboard. */
  raw: string
}

/** Every panel query of the dashboard, with template variables substituted. */
export function panelQueries(
  values: Readonly<Record<string, string>> = DEFAULT_VARIABLE_VALUES,
  dashboard: Dashboard = loadDashboard(),
): PanelQuery[] {
  return allPanels(dashboard).flatMap((panel) =>
    (panel.targets ?? [])
      .filter((target) => typeof target.expr === 'string' && target.expr.trim() !== '')
      .map((target) => ({
        panelId: panel.id,
        panelTitle: panel.title,
        refId: target.refId,
        instant: target.instant === true,
        expr: substituteVariables(target.expr as string, values),
        raw: target.expr as string,
      })),
  )
}

/** The uid of the provisioned Prometheus datasource (a regex on the `uid:` line). */
export function provisionedDatasourceUid(file: string = DATASOURCE_PROVISIONING_PATH): string {
  const match = /^\s*uid:\s*['"]?([\w.-]+)['"]?\s*$/m.exec(readFileSync(file, 'utf8'))
  if (!match?.[1]) throw new Error(`no datasource uid in ${file}`)
  return match[1]
}

export interface Rule {
  kind: 'record' | 'alert'
  name: string
  expr: string
  /** Top-level keys of the rule item, as raw text (`for`, `labels`, `annotations`, ...). */
  keys: Record<string, string>
  file: string
  line: number
}

const ITEM_START = /^(\s*)-\s+([\w]+):(.*)$/
const KEY_LINE = /^(\s*)([\w]+):(.*)$/

function indentOf(line: string): number {
  return line.length - line.trimStart().length
}

function scalar(text: string): string {
  const value = text.trim()
  if (value.startsWith("'") && value.endsWith("'")) return value.slice(1, -1).replaceAll("''", "'")
  if (value.startsWith('"') && value.endsWith('"')) return JSON.parse(value) as string
  return value
}

/** Reads the block or plain value of the key on `lines[start]`; returns it and the next line index. */
function readValue(lines: string[], start: number, keyIndent: number, inline: string): [string, number] {
  const head = inline.trim()
  let end = start + 1
  while (end < lines.length) {
    const line = lines[end] as string
    if (line.trim() !== '' && indentOf(line) <= keyIndent) break
    end++
  }
  const body = lines.slice(start + 1, end)
  while (body.length > 0 && (body[body.length - 1] as string).trim() === '') body.pop()
  if (/^[|>][+-]?$/.test(head)) {
    const contentIndent = Math.min(...body.filter((l) => l.trim() !== '').map(indentOf))
    const content = body.map((l) => l.slice(contentIndent))
    return [head.startsWith('|') ? content.join('\n') : content.join(' ').replace(/\s+/g, ' '), end]
  }
  if (body.length === 0) return [scalar(head), end]
  // A nested mapping (labels:, annotations:) or a plain scalar folded over several lines.
  return [head === '' ? body.join('\n') : [head, ...body.map((l) => l.trim())].join(' '), end]
}

/** Recording and alerting rules of one rule file. */
export function parseRuleFile(file: string): Rule[] {
  const lines = readFileSync(file, 'utf8').split('\n')
  const rules: Rule[] = []
  let i = 0
  while (i < lines.length) {
    const start = ITEM_START.exec(lines[i] as string)
    if (!start) {
      i++
      continue
    }
    const keyIndent = (start[1] as string).length + 2
    const keys: Record<string, string> = {}
    const line = i + 1
    let [value, next] = readValue(lines, i, keyIndent, start[3] as string)
    keys[start[2] as string] = value
    i = next
    while (i < lines.length) {
      const text = lines[i] as string
      if (text.trim() === '' || text.trimStart().startsWith('#')) {
        i++
        continue
      }
      const key = KEY_LINE.exec(text)
      if (!key || (key[1] as string).length !== keyIndent) break
      ;[value, next] = readValue(lines, i, keyIndent, key[3] as string)
      keys[key[2] as string] = value
      i = next
    }
    const kind = keys.record !== undefined ? 'record' : keys.alert !== undefined ? 'alert' : undefined
    if (kind && keys.expr !== undefined) {
      rules.push({ kind, name: keys[kind] as string, expr: keys.expr, keys, file, line })
    } else {
      // Not a rule (e.g. a group whose `rules:` holds the rules): scan inside it.
      i = line
    }
  }
  return rules
}

export function ruleFiles(dir: string = RULES_DIR): string[] {
  return readdirSync(dir)
    .filter((name) => /\.ya?ml$/.test(name))
    .sort()
    .map((name) => path.join(dir, name))
}

/** Every recording and alerting rule under `infra/prometheus/rules`. */
export function allRules(dir: string = RULES_DIR): Rule[] {
  return ruleFiles(dir).flatMap(parseRuleFile)
}

/** Every recording rule's name and expression (a name can repeat, e.g. one per `quantile` label). */
export function recordingRuleExpressions(dir: string = RULES_DIR): { record: string; expr: string }[] {
  return allRules(dir)
    .filter((rule) => rule.kind === 'record')
    .map((rule) => ({ record: rule.name, expr: rule.expr }))
}

/** Names of the recording rules, by a regex on the `record:` lines. */
export function recordingRuleNames(dir: string = RULES_DIR): Set<string> {
  const names = new Set<string>()
  for (const file of ruleFiles(dir)) {
    for (const m of readFileSync(file, 'utf8').matchAll(/^\s*-?\s*record:\s*['"]?([\w:]+)['"]?\s*$/gm)) {
      names.add(m[1] as string)
    }
  }
  return names
}

/** Metrics the gateway, the GPU host and Prometheus itself export (DESIGN.md, Metrics). */
export const KNOWN_METRICS: ReadonlySet<string> = new Set([
  'gpu_worker_jobs_total',
  'gpu_worker_job_errors_total',
  'gpu_worker_progress_percent',
  'gpu_worker_gpu_busy',
  'gpu_worker_jobs_running',
  'gpu_worker_queue_jobs',
  'gpu_worker_oldest_waiting_job_age_seconds',
  'gpu_worker_attempts_total',
  'gpu_worker_retries_total',
  'gpu_worker_cancellations_total',
  'gpu_worker_timeouts_total',
  'gpu_worker_gpu_memory_used_bytes',
  'gpu_worker_gpu_memory_total_bytes',
  'gpu_worker_gpu_memory_reserved_bytes',
  'gpu_worker_gpu_memory_free_bytes',
  'gpu_worker_gpu_memory_leaks_total',
  'gpu_worker_running_jobs_per_gpu',
  'gpu_worker_oldest_progress_age_seconds',
  'gpu_worker_slots',
  'gpu_worker_info',
  'gateway_websocket_connections',
  'gateway_sse_streams',
  'gateway_events_forwarded_total',
  'gateway_events_dropped_total',
  'gateway_jobs_submitted_total',
  // Written by Prometheus: scrape health and alert state.
  'up',
  'ALERTS',
])

export const KNOWN_HISTOGRAMS: ReadonlySet<string> = new Set([
  'gpu_worker_job_duration_seconds',
  'gpu_worker_queue_wait_seconds',
  'gpu_worker_subprocess_start_seconds',
  'gateway_http_request_duration_seconds',
])

/** True for our metrics, histogram series, prom-client defaults, dcgm-exporter series or recording rules. */
export function isKnownMetric(
  name: string,
  recordingRules: ReadonlySet<string> = recordingRuleNames(),
): boolean {
  if (KNOWN_METRICS.has(name) || recordingRules.has(name)) return true
  if (name.startsWith('DCGM_') || name.startsWith('process_') || name.startsWith('nodejs_')) return true
  const histogram = /^(.*)_(bucket|sum|count)$/.exec(name)
  return histogram !== null && KNOWN_HISTOGRAMS.has(histogram[1] as string)
}

const PROMQL_KEYWORDS = new Set([
  'and',
  'or',
  'unless',
  'by',
  'without',
  'on',
  'ignoring',
  'group_left',
  'group_right',
  'bool',
  'offset',
  'atan2',
  'inf',
  'nan',
])

/**
 * Metric names an expression selects: identifiers that are not functions, keywords, label names in
 * `by (...)`/`on (...)`, strings, matchers or durations.
 * @example metricNames('sum by (type) (rate(x_total{a="b"}[5m])) / on (type) y') // ['x_total', 'y']
 */
export function metricNames(expr: string): string[] {
  const stripped = expr
    .replace(/#.*$/gm, ' ')
    .replace(/"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`/g, '""')
    .replace(/\{[^}]*\}/g, ' ')
    .replace(/\[[^\]]*\]/g, ' ')
    .replace(/\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)/g, ' ')
  const names = new Set<string>()
  for (const m of stripped.matchAll(/(?<![\w:.$])([a-zA-Z_:][\w:]*)(?![\w:]|\s*\()/g)) {
    const name = m[1] as string
    if (!PROMQL_KEYWORDS.has(name.toLowerCase())) names.add(name)
  }
  return [...names]
}
