import { describe, expect, it } from 'vitest'
import {
  paramsFromAssignments,
  parseDuration,
  parseIntOption,
  parseParamsJson,
  parseValue,
  splitKey,
  UsageError,
} from '../../gateway/cli/params.ts'

describe('--param values', () => {
  it.each([
    ['3', 3],
    ['-2', -2],
    ['0.5', 0.5],
    ['1e-4', 1e-4],
    ['true', true],
    ['false', false],
    ['null', null],
    ['{"a":[1,2]}', { a: [1, 2] }],
    ['[1,"x"]', [1, 'x']],
    ['"007"', '007'],
    ['007', '007'],
    ['a cat', 'a cat'],
    ['', ''],
    ['{not json', '{not json'],
    ['12345678901234567890', '12345678901234567890'],
    ['1.', '1.'],
    ['0x10', '0x10'],
  ])('%j -> %j', (raw, expected) => {
    expect(parseValue(raw)).toEqual(expected)
  })
})

describe('--param assignments', () => {
  it('types values and nests dotted keys', () => {
    expect(
      paramsFromAssignments([
        'epochs=3',
        'inputs.prompt=a cat = cute',
        'inputs.seed=42',
        'engine=simulate',
        'a\\.b=1',
      ]),
    ).toEqual({
      epochs: 3,
      inputs: { prompt: 'a cat = cute', seed: 42 },
      engine: 'simulate',
      'a.b': 1,
    })
  })

  it('merges over --params and lets later assignments win', () => {
    const base = parseParamsJson('{"inputs":{"prompt":"x","seed":1},"frames":4}')
    expect(paramsFromAssignments(['inputs.seed=2', 'frames=8', 'frames=9'], base)).toEqual({
      inputs: { prompt: 'x', seed: 2 },
      frames: 9,
    })
  })

  it('refuses what it cannot mean', () => {
    expect(() => paramsFromAssignments(['novalue'])).toThrow(UsageError)
    expect(() => paramsFromAssignments(['=3'])).toThrow(/key=value/)
    expect(() => paramsFromAssignments(['a..b=1'])).toThrow(/empty key/)
    expect(() => paramsFromAssignments(['a=1', 'a.b=2'])).toThrow(/a is already set to a value/)
    expect(() => paramsFromAssignments(['__proto__.x=1'])).toThrow(/not allowed/)
    expect(() => parseParamsJson('[1]')).toThrow(/JSON object/)
    expect(() => parseParamsJson('{')).toThrow(/not valid JSON/)
    expect(({} as Record<string, unknown>).x).toBeUndefined()
  })

  it('splits keys on unescaped dots', () => {
    expect(splitKey('a.b\\.c.d')).toEqual(['a', 'b.c', 'd'])
  })
})

describe('numeric options', () => {
  it('parses durations and integers', () => {
    expect(parseDuration('timeout', '90')).toBe(90)
    expect(parseDuration('timeout', '30m')).toBe(1800)
    expect(parseDuration('timeout', '2h')).toBe(7200)
    expect(parseDuration('timeout', '1.5m')).toBe(90)
    expect(() => parseDuration('timeout', 'soon')).toThrow(/--timeout/)
    expect(() => parseDuration('timeout', '0.5')).toThrow(/whole number/)
    expect(parseIntOption('priority', '5')).toBe(5)
    expect(() => parseIntOption('priority', 'high')).toThrow(/--priority must be a whole number/)
    expect(parseIntOption('priority', undefined)).toBeUndefined()
  })
})
