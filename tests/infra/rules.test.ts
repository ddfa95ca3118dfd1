import { readdirSync, readFileSync } from 'node:fs'
import path from 'node:path'
import { describe, expect, it } from 'vitest'
import {
  allRules,
  isKnownMetric,
  metricNames,
  RULE_TESTS_DIR,
  recordingRuleExpressions,
  recordingRuleNames,
} from './dashboard-queries.ts'

const rules = allRules()
const alerts = rules.filter((rule) => rule.kind === 'alert')
const recordingRules = recordingRuleNames()
const ruleTests = readdirSync(RULE_TESTS_DIR)
  .filter((name) => name.endsWith('.yml'))
  .map((name) => readFileSync(path.join(RULE_TESTS_DIR, name), 'utf8'))
  .join('\n')

describe('Prometheus rules', () => {
  it('reads recording rules and alerts', () => {
    expect(recordingRuleExpressions().length).toBeGreaterThanOrEqual(10)
    expect(recordingRules.size).toBeGreaterThanOrEqual(10)
    expect(alerts.length).toBeGreaterThanOrEqual(8)
  })

  it('names recording rules level:metric:operations', () => {
    for (const name of recordingRules) expect(name).toMatch(/^[a-zA-Z_]+:[a-zA-Z0-9_]+:[a-zA-Z0-9_]+$/)
  })

  it('gives every alert a for, a severity, a summary and a description', () => {
    for (const alert of alerts) {
      expect(alert.keys.for, alert.name).toMatch(/^\d+[smh]$/)
      expect(alert.keys.labels, alert.name).toMatch(/severity:\s*(critical|warning|info)\b/)
      expect(alert.keys.annotations, alert.name).toMatch(/^\s*summary:/m)
      expect(alert.keys.annotations, alert.name).toMatch(/^\s*description:/m)
    }
  })

  it('covers what the issue asks to alert on', () => {
    const exprs = alerts.map((alert) => alert.expr).join('\n')
    for (const needle of [
      'gpu_worker_jobs_total{status="failed"}',
      'gpu_worker_oldest_waiting_job_age_seconds',
      'up{job="gpu-host"} == 0',
      'up{job="gateway"} == 0',
      'on (gpu, UUID) group_left',
      'gpu_worker_running_jobs_per_gpu',
      'gpu_worker_retries_total',
      'gpu_worker_oldest_progress_age_seconds',
      'gpu_worker_gpu_memory_leaks_total',
    ]) {
      expect(exprs).toContain(needle)
    }
  })

  it('uses only known metrics', () => {
    const unknown = rules.flatMap((rule) =>
      metricNames(rule.expr)
        .filter((name) => !isKnownMetric(name, recordingRules))
        .map((name) => `${rule.name}: ${name}`),
    )
    expect(unknown).toEqual([])
  })

  it('has a promtool test in which each alert fires', () => {
    for (const alert of alerts) {
      const fires = new RegExp(`alertname: ${alert.name}\\s*\\n\\s*exp_alerts:\\s*\\n\\s*- exp_labels:`)
      expect(ruleTests, alert.name).toMatch(fires)
    }
  })
})
