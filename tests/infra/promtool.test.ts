import { execFile } from 'node:child_process'
import { mkdtemp, readdir, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { promisify } from 'node:util'
import { afterAll, describe, expect, it } from 'vitest'
import { PROMETHEUS_CONFIG, panelQueries, REPO_ROOT, RULE_TESTS_DIR, ruleFiles } from './dashboard-queries.ts'

const execFileAsync = promisify(execFile)
/** Path to promtool; Debian/Ubuntu: `apt-get install prometheus`. */
const PROMTOOL = process.env.PROMTOOL ?? 'promtool'

interface Result {
  code: number
  output: string
}

async function promtool(args: string[]): Promise<Result> {
  try {
    const { stdout, stderr } = await execFileAsync(PROMTOOL, args, { cwd: REPO_ROOT, timeout: 60_000 })
    return { code: 0, output: stdout + stderr }
  } catch (error) {
    const failed = error as { code?: number | string; stdout?: string; stderr?: string; message: string }
    const code = typeof failed.code === 'number' ? failed.code : -1
    return { code, output: `${failed.stdout ?? ''}${failed.stderr ?? ''}` || failed.message }
  }
}

async function promtoolVersion(): Promise<string | undefined> {
  const { code, output } = await promtool(['--version'])
  return code === 0 ? output.split('\n')[0]?.trim() : undefined
}

const version = await promtoolVersion()
const relative = (file: string) => path.relative(REPO_ROOT, file)

if (!version) {
  console.warn(
    `promtool tests skipped: "${PROMTOOL}" not found (apt-get install prometheus, or set PROMTOOL)`,
  )
}

describe.skipIf(!version)(
  `promtool (${version ?? `skipped: ${PROMTOOL} not installed; apt-get install prometheus, or set PROMTOOL`})`,
  () => {
    let scratch: string | undefined
    afterAll(async () => {
      if (scratch) await rm(scratch, { recursive: true, force: true })
    })

    it('checks prometheus.yml and the rule files it loads', async () => {
      const result = await promtool(['check', 'config', relative(PROMETHEUS_CONFIG)])
      expect(result.code, result.output).toBe(0)
      expect(result.output).toMatch(/rule files found/)
    })

    it('checks the rule files', async () => {
      const result = await promtool(['check', 'rules', ...ruleFiles().map(relative)])
      expect(result.code, result.output).toBe(0)
    })

    it('passes the rule unit tests', async () => {
      const tests = (await readdir(RULE_TESTS_DIR))
        .filter((name) => name.endsWith('.yml'))
        .sort()
        .map((name) => relative(path.join(RULE_TESTS_DIR, name)))
      expect(tests.length).toBeGreaterThan(0)
      const result = await promtool(['test', 'rules', ...tests])
      expect(result.code, result.output).toBe(0)
    })

    // promtool cannot parse a bare expression, but it parses recording rules: wrap each dashboard query.
    it('parses every dashboard query', async () => {
      scratch = await mkdtemp(path.join(tmpdir(), 'dashboard-queries-'))
      const file = path.join(scratch, 'dashboard.yml')
      const rules = panelQueries().map(
        (query) =>
          `      - record: dashboard:panel_${query.panelId}_${query.refId}:query\n` +
          `        expr: ${JSON.stringify(query.expr)}\n`,
      )
      await writeFile(file, `groups:\n  - name: dashboard\n    rules:\n${rules.join('')}`)
      const result = await promtool(['check', 'rules', file])
      expect(result.code, result.output).toBe(0)
    })
  },
)
