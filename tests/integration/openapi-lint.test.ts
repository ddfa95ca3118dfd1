import { execFile } from 'node:child_process'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { openApiDocument, paramsComponent, submitComponent } from '../../gateway/openapi.ts'
import { JOB_CATALOG, JOB_TYPES } from '../../schema/params/index.ts'

// The document /openapi.json serves, linted by the real Redocly CLI under the recommended rules
// (redocly.yaml), and its submit body: one member per job type of the catalog, told apart by `type`.

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..')
const redocly = path.join(root, 'node_modules/@redocly/cli/bin/cli.js')

interface LintReport {
  totals: { errors: number; warnings: number }
  problems: { ruleId: string; message: string; location: { pointer: string }[] }[]
}

let dir: string
beforeAll(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'openapi-lint-'))
})
afterAll(async () => {
  await rm(dir, { recursive: true, force: true })
})

/** `redocly lint` of `doc` with the repository's redocly.yaml; exits non-zero on errors only. */
async function lint(doc: unknown, name: string): Promise<LintReport> {
  const file = path.join(dir, name)
  await writeFile(file, JSON.stringify(doc, null, 2))
  const args = [redocly, 'lint', file, '--config', path.join(root, 'redocly.yaml'), '--format=json']
  const { stdout } = await promisify(execFile)(process.execPath, args, { cwd: root }).catch(
    (err: { stdout?: string }) => ({ stdout: err.stdout ?? '' }),
  )
  // The JSON report follows a deprecation banner on Node 20.
  return JSON.parse(stdout.slice(stdout.indexOf('{'))) as LintReport
}

const said = (r: LintReport) =>
  r.problems.map((p) => `${p.ruleId} at ${p.location[0]?.pointer}: ${p.message}`)

type Schema = Record<string, unknown> & { properties?: Record<string, Record<string, unknown>> }
const schemas = () =>
  (openApiDocument() as { components: { schemas: Record<string, Schema> } }).components.schemas

describe('the OpenAPI document', () => {
  it('passes redocly lint under the recommended rules: no error, no warning', async () => {
    const report = await lint(openApiDocument(), 'openapi.json')
    expect(said(report)).toEqual([])
    expect(report.totals).toMatchObject({ errors: 0, warnings: 0 })
  })

  it('fails the lint when an operation loses its success or error responses, or a type its params', async () => {
    const doc = openApiDocument() as {
      paths: Record<string, Record<string, { responses: Record<string, unknown> }>>
      components: { schemas: Record<string, unknown> }
    }
    const health = doc.paths['/healthz']?.get
    const cancel = doc.paths['/api/jobs/{jobId}/cancel']?.post
    if (!health || !cancel) throw new Error('the document lost /healthz or cancel')
    delete health.responses['200']
    for (const code of Object.keys(cancel.responses)) if (code.startsWith('4')) delete cancel.responses[code]
    delete doc.components.schemas[paramsComponent('train_voice')]
    const report = await lint(doc, 'broken.json')
    const rules = report.problems.map((p) => `${p.ruleId} ${p.location[0]?.pointer}`)
    expect(rules).toEqual(
      expect.arrayContaining([
        'rule/operation-success-response #/paths/~1healthz/get/responses',
        'operation-4xx-response #/paths/~1api~1jobs~1{jobId}~1cancel/post/responses',
        expect.stringMatching(/^no-unresolved-refs /),
      ]),
    )
    expect(report.totals.errors).toBeGreaterThan(0)
  })

  it('types the submit body as a union by `type`: one member per catalog type, with its params', () => {
    const all = schemas()
    const union = all.SubmitJobBody as { oneOf: { $ref: string }[]; discriminator: unknown }
    const refs = JOB_TYPES.map((t) => `#/components/schemas/${submitComponent(t)}`)
    expect(Object.keys(JOB_CATALOG)).toEqual([...JOB_TYPES])
    expect(union.oneOf).toEqual(refs.map(($ref) => ({ $ref })))
    expect(union.discriminator).toEqual({
      propertyName: 'type',
      mapping: Object.fromEntries(JOB_TYPES.map((t, i) => [t, refs[i]])),
    })
    for (const type of JOB_TYPES) {
      const member = all[submitComponent(type)]
      const params = all[paramsComponent(type)]
      expect(member, type).toMatchObject({
        type: 'object',
        required: expect.arrayContaining(['type', 'params']),
        additionalProperties: false,
        properties: {
          type: { type: 'string', const: type },
          params: { $ref: `#/components/schemas/${paramsComponent(type)}` },
        },
      })
      expect(Object.keys(member?.properties ?? {}).sort()).toEqual(
        ['gpu', 'jobId', 'maxAttempts', 'params', 'priority', 'timeoutSec', 'type'].sort(),
      )
      // The validator's params: every key of the catalog's schema, nothing more, unknown keys refused.
      expect(params, type).toMatchObject({ type: 'object', additionalProperties: false })
      expect(Object.keys(params?.properties ?? {})).toEqual(Object.keys(JOB_CATALOG[type].params.entries))
      expect(params?.title).toBe(JOB_CATALOG[type].title)
    }
    // The batch's items are the same union.
    expect(all.SubmitBatchBody?.properties?.jobs?.items).toEqual({
      $ref: '#/components/schemas/SubmitJobBody',
    })
  })
})
