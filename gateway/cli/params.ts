/** A mistake in how the command was called: reported with a pointer to `--help`, exit code 3. */
export class UsageError extends Error {
  override name = 'UsageError'
}

type Json = null | boolean | number | string | Json[] | { [key: string]: Json }
export type JsonObject = { [key: string]: Json }

const JSON_NUMBER = /^-?(0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?$/
const FORBIDDEN_KEYS = new Set(['__proto__', 'prototype', 'constructor'])

/**
 * The value of `--param k=v`, typed the way a person means it: `3` and `1e-4` are numbers, `true`,
 * `false` and `null` are themselves, `{...}`, `[...]` and `"..."` are JSON; anything else is a string.
 * Quote to keep a string that looks like something else: `--param 'name="007"'`. Integers too large to
 * be exact stay strings.
 */
export function parseValue(raw: string): Json {
  if (raw === 'true') return true
  if (raw === 'false') return false
  if (raw === 'null') return null
  if (JSON_NUMBER.test(raw)) {
    const n = Number(raw)
    if (Number.isFinite(n) && (!Number.isInteger(n) || Number.isSafeInteger(n) || /[.eE]/.test(raw))) return n
    return raw
  }
  const first = raw.trimStart()[0]
  if (first === '{' || first === '[' || first === '"') {
    try {
      return JSON.parse(raw) as Json
    } catch {
      return raw
    }
  }
  return raw
}

/** `a.b\.c` -> `['a', 'b.c']`: dots split keys, `\.` is a literal dot. */
export function splitKey(key: string): string[] {
  const parts: string[] = []
  let current = ''
  for (let i = 0; i < key.length; i++) {
    const ch = key[i]
    if (ch === '\\' && key[i + 1] === '.') {
      current += '.'
      i++
    } else if (ch === '.') {
      parts.push(current)
      current = ''
    } else current += ch
  }
  parts.push(current)
  return parts
}

const isObject = (x: unknown): x is JsonObject => typeof x === 'object' && x !== null && !Array.isArray(x)

/** Deep merge of `source` into `target` (objects merge key by key; anything else replaces). */
export function mergeInto(target: JsonObject, source: JsonObject): JsonObject {
  for (const [key, value] of Object.entries(source)) {
    const existing = target[key]
    if (isObject(existing) && isObject(value)) mergeInto(existing, value)
    else target[key] = value
  }
  return target
}

/**
 * Builds params from `--param key=value` assignments: values typed by `parseValue`, dotted keys make
 * nested objects (`inputs.prompt=a cat` -> `{inputs: {prompt: 'a cat'}}`), later assignments win.
 */
export function paramsFromAssignments(assignments: readonly string[], base: JsonObject = {}): JsonObject {
  const params = base
  for (const assignment of assignments) {
    const eq = assignment.indexOf('=')
    if (eq <= 0) throw new UsageError(`--param expects key=value, got "${assignment}"`)
    const keyText = assignment.slice(0, eq)
    const path = splitKey(keyText)
    if (path.some((k) => k === '')) throw new UsageError(`--param "${keyText}": empty key segment`)
    if (path.some((k) => FORBIDDEN_KEYS.has(k)))
      throw new UsageError(`--param "${keyText}": that key name is not allowed`)
    let node: JsonObject = params
    for (let i = 0; i < path.length - 1; i++) {
      const key = path[i] as string
      const next = node[key]
      if (next === undefined) {
        const created: JsonObject = {}
        node[key] = created
        node = created
      } else if (isObject(next)) node = next
      else
        throw new UsageError(
          `--param "${keyText}": ${path.slice(0, i + 1).join('.')} is already set to a value, not an object`,
        )
    }
    const last = path[path.length - 1] as string
    const value = parseValue(assignment.slice(eq + 1))
    const existing = node[last]
    node[last] = isObject(existing) && isObject(value) ? mergeInto(existing, value) : value
  }
  return params
}

/** `--params '<json>'`: must be a JSON object. */
export function parseParamsJson(text: string, source = '--params'): JsonObject {
  let parsed: unknown
  try {
    parsed = JSON.parse(text)
  } catch (err) {
    throw new UsageError(`${source} is not valid JSON: ${(err as Error).message}`)
  }
  if (!isObject(parsed)) throw new UsageError(`${source} must be a JSON object ({...})`)
  return parsed
}

/** A positive integer option (`--priority 5`). */
export function parseIntOption(name: string, raw: string | undefined): number | undefined {
  if (raw === undefined) return undefined
  if (!/^\d+$/.test(raw.trim())) throw new UsageError(`--${name} must be a whole number, got "${raw}"`)
  return Number(raw.trim())
}

const UNIT_SECONDS: Record<string, number> = { s: 1, m: 60, h: 3600, d: 86_400 }

/** `--timeout 90`, `90s`, `30m`, `2h`, `1d` -> seconds. */
export function parseDuration(name: string, raw: string | undefined): number | undefined {
  if (raw === undefined) return undefined
  const m = raw.trim().match(/^(\d+(?:\.\d+)?)\s*([smhd]?)$/i)
  if (!m) throw new UsageError(`--${name} must be seconds or a duration such as 90s, 30m, 2h, got "${raw}"`)
  const seconds = Number(m[1]) * (UNIT_SECONDS[(m[2] || 's').toLowerCase()] ?? 1)
  if (!Number.isInteger(seconds))
    throw new UsageError(`--${name} must come to a whole number of seconds, got "${raw}"`)
  return seconds
}
