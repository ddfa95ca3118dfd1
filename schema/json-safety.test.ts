import * as v from 'valibot'
import { describe, expect, it } from 'vitest'
import { JobEnvelope } from './envelope.ts'
import { toFieldIssues } from './issues.ts'
import { findUnsafeJson, jsonSafetyIssue, MAX_JSON_DEPTH } from './json-safety.ts'

/** `{"a":{"a":...1}}` with `depth` objects, built without recursion. */
const nestedObject = (depth: number): unknown => {
  let value: unknown = 1
  for (let i = 0; i < depth; i++) value = { a: value }
  return value
}

describe('findUnsafeJson', () => {
  it.each([
    ['NUL in a value', { a: 'x\u0000y' }, 'a'],
    ['a lone high surrogate', { a: ['ok', '\ud83d'] }, 'a.1'],
    ['a lone low surrogate', { a: { b: '\ude00x' } }, 'a.b'],
    ['a surrogate pair reversed', { a: '\ude00\ud83d' }, 'a'],
    ['NUL in a key', { a: { 'k\u0000': 1 } }, 'a'],
    ['a lone surrogate in a key', { '\ud800': 1 }, '(body)'],
    ['Infinity', { a: [1, Number.POSITIVE_INFINITY] }, 'a.1'],
    ['-Infinity', { a: Number.NEGATIVE_INFINITY }, 'a'],
    ['NaN', { a: Number.NaN }, 'a'],
    ['__proto__', JSON.parse('{"a":{"__proto__":{"polluted":true}}}'), 'a.__proto__'],
    ['constructor', { a: [{ constructor: 1 }] }, 'a.0.constructor'],
    ['prototype', { prototype: 1 }, 'prototype'],
  ])('refuses %s at its path', (_what, value, path) => {
    expect(jsonSafetyIssue(value)?.path).toBe(path)
  })

  it('reports the first problem in document order', () => {
    expect(jsonSafetyIssue({ a: 'ok', b: '\u0000', c: '\u0000' }, 'params')?.path).toBe('params.b')
  })

  it('accepts ordinary JSON: emoji (surrogate pairs), empty containers, nesting up to the limit', () => {
    expect(findUnsafeJson({ a: 'fox 🦊', b: [], c: {}, d: null, e: -0.5, f: true })).toBeNull()
    expect(findUnsafeJson(nestedObject(MAX_JSON_DEPTH))).toBeNull()
  })

  it('refuses one level more than the limit, and a nesting 200 000 deep without running out of stack', () => {
    expect(findUnsafeJson(nestedObject(MAX_JSON_DEPTH + 1))?.message).toMatch(/nested more than 32/)
    const deep = JSON.parse(`${'['.repeat(200_000)}${']'.repeat(200_000)}`)
    expect(findUnsafeJson(deep)?.path).toHaveLength(MAX_JSON_DEPTH)
  })

  it('never puts the value in the message', () => {
    for (const value of [{ a: 'sk-SECRET\u0000' }, { 'SECRET\u0000': 1 }])
      expect(JSON.stringify(jsonSafetyIssue(value))).not.toContain('SECRET')
  })
})

describe('JobEnvelope (jobs from any producer)', () => {
  const envelope = (extra: Record<string, unknown>) => ({
    jobId: 'j1',
    type: 'train_lora',
    params: { baseModel: 'sd15', datasetPath: 'ds' },
    ...extra,
  })
  it.each([
    ['a NUL in params', { params: { baseModel: 'a\u0000', datasetPath: 'ds' } }, 'params.baseModel'],
    ['a constructor key in params', { params: { constructor: 1 } }, 'params.constructor'],
    ['jobId ..', { jobId: '..' }, 'jobId'],
    ['jobId .', { jobId: '.' }, 'jobId'],
    ['priority over 2097151', { priority: 2_097_152 }, 'priority'],
  ])('refuses %s, naming the field', (_what, extra, path) => {
    const r = v.safeParse(JobEnvelope, envelope(extra))
    expect(r.success).toBe(false)
    expect(toFieldIssues(r.issues ?? []).map((i) => i.path)).toContain(path)
  })
  it('takes a valid envelope with the highest BullMQ priority', () => {
    expect(v.is(JobEnvelope, envelope({ priority: 2_097_151 }))).toBe(true)
  })
})
