import * as v from 'valibot'
import { describe, expect, it } from 'vitest'
import { SubmitJobBody } from './api.ts'
import { toFieldIssues } from './issues.ts'
import { PARAMS_BY_TYPE } from './params/index.ts'
import { TemplateInputs } from './workflow.ts'

/** Values that valibot's default messages would print back, and the text that must not come back. */
const HOSTILE: [unknown, string][] = [
  [987_654_321.75, '987654321'],
  [-987_654_321, '987654321'],
  [Number.POSITIVE_INFINITY, 'Infinity'],
  [Number.NEGATIVE_INFINITY, 'Infinity'],
  ['sk-SECRET-TOKEN', 'SECRET'],
  ['', '""'],
  [true, 'true'],
  [['SECRET'], 'SECRET'],
  [{ SECRET: 1 }, 'SECRET'],
]

const valid: Record<string, Record<string, unknown>> = {
  train_lora: { baseModel: 'sd15', datasetPath: 'ds' },
  train_voice: { speakerName: 'ann', datasetPath: 'ds' },
  render_video: {},
}

describe('toFieldIssues never echoes the rejected value', () => {
  const targets: [string, v.GenericSchema, Record<string, unknown>, string[]][] = [
    ...Object.entries(PARAMS_BY_TYPE).map(
      ([type, schema]): [string, v.GenericSchema, Record<string, unknown>, string[]] => [
        `params of ${type}`,
        schema,
        valid[type] ?? {},
        Object.keys(schema.entries),
      ],
    ),
    [
      'the submit body',
      SubmitJobBody,
      { type: 'train_lora', params: {} },
      ['type', 'params', 'jobId', 'priority', 'timeoutSec', 'maxAttempts'],
    ],
    ['render_video inputs', TemplateInputs, {}, Object.keys(TemplateInputs.entries)],
  ]
  for (const [what, schema, base, fields] of targets)
    it(`for every field of ${what}`, () => {
      for (const field of fields)
        for (const [value, text] of HOSTILE) {
          const r = v.safeParse(schema, { ...base, [field]: value })
          if (r.success) continue
          const issues = toFieldIssues(r.issues)
          expect(issues.length).toBeGreaterThan(0)
          for (const issue of issues) {
            expect(issue.path, `${field}=${String(value)}`).toContain(field)
            expect(issue.message, `${field}=${String(value)}`).not.toContain(text)
          }
        }
    })

  it('says what was expected', () => {
    const r = v.safeParse(PARAMS_BY_TYPE.train_lora, { ...valid.train_lora, epochs: 2.5, rank: 5000 })
    expect(toFieldIssues(r.issues ?? [])).toEqual([
      { path: 'epochs', message: 'must be an integer' },
      { path: 'rank', message: 'must be <=1024' },
    ])
  })

  it('names the node of an inline graph that a union would only call "not (string | Object)"', () => {
    const r = v.safeParse(PARAMS_BY_TYPE.render_video, { workflow: { '3': { inputs: {} } } })
    expect(toFieldIssues(r.issues ?? [], 'params')).toEqual([
      { path: 'params.workflow.3.class_type', message: 'is required' },
    ])
  })
})
