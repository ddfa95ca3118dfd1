import * as v from 'valibot'
import type { FieldIssue } from './issues.ts'

/**
 * JSON that parses but that the platform cannot keep as it was sent. One walk over a whole request body
 * or queue payload, before any schema or store sees it:
 * - strings and keys with NUL or an unpaired UTF-16 surrogate: Postgres `jsonb` and `text` refuse them
 *   (the insert would fail after the request was accepted);
 * - numbers beyond a double (`1e999` parses to Infinity): `JSON.stringify` writes them as `null`;
 * - the keys `__proto__`, `constructor` and `prototype`: valibot's records drop them without a word
 *   (a guard against prototype pollution), so the job would run without them;
 * - nesting deeper than {@link MAX_JSON_DEPTH}: recursive code downstream (drivers, serialisers, Postgres
 *   itself) runs out of stack long before a 1 MB body runs out of brackets.
 * The walk is iterative, so a body nested hundreds of thousands deep costs no stack here either.
 */

/** Levels of objects and arrays below the checked value (the body is level 0, `params` level 1). */
export const MAX_JSON_DEPTH = 32

/** Whether parsed JSON is an object (`{...}`): not null, an array, a number or a string. */
export const isJsonObject = (value: unknown): value is Record<string, unknown> =>
  typeof value === 'object' && value !== null && !Array.isArray(value)

/** Keys that JavaScript object handling drops or treats specially; refused as unknown fields. */
export const RESERVED_KEYS: readonly string[] = ['__proto__', 'constructor', 'prototype']

// NUL, or a surrogate code unit not part of a pair (with the u flag, a pair is one code point, not \p{Cs}).
const UNSTORABLE = /\p{Cs}/u
const storable = (s: string): boolean => !s.includes('\u0000') && !UNSTORABLE.test(s)

/** Where an unsafe value is: the keys from the checked value down, and why (never the value itself). */
export interface JsonSafetyIssue {
  path: (string | number)[]
  message: string
}

/**
 * The first reason `value` (parsed JSON) cannot be kept as sent, or null when it is safe.
 *
 * @example findUnsafeJson(JSON.parse('{"a":"x\\u0000"}')) // { path: ['a'], message: 'must not contain NUL ...' }
 */
export function findUnsafeJson(value: unknown, maxDepth = MAX_JSON_DEPTH): JsonSafetyIssue | null {
  const stack: { value: unknown; path: (string | number)[] }[] = [{ value, path: [] }]
  for (let item = stack.pop(); item; item = stack.pop()) {
    const { value: node, path } = item
    if (typeof node === 'string') {
      if (!storable(node))
        return { path, message: 'must not contain NUL characters or unpaired UTF-16 surrogates' }
    } else if (typeof node === 'number') {
      if (!Number.isFinite(node)) return { path, message: 'must be a finite number' }
    } else if (typeof node === 'object' && node !== null) {
      if (path.length >= maxDepth)
        return { path, message: `must not be nested more than ${maxDepth} levels deep` }
      const entries: [string | number, unknown][] = Array.isArray(node)
        ? node.map((child, i) => [i, child])
        : Object.entries(node)
      // Pushed in reverse so that the first offending value in document order is the one reported.
      for (let i = entries.length - 1; i >= 0; i--) {
        const [key, child] = entries[i] as [string | number, unknown]
        if (typeof key === 'string') {
          if (!storable(key))
            return { path, message: 'has a key with NUL characters or unpaired UTF-16 surrogates' }
          if (RESERVED_KEYS.includes(key)) return { path: [...path, key], message: 'unknown field' }
        }
        stack.push({ value: child, path: [...path, key] })
      }
    }
  }
  return null
}

/** `findUnsafeJson` as a field issue, its path prefixed (`params.inputs.prompt`); `(body)` for the root. */
export function jsonSafetyIssue(value: unknown, prefix = ''): FieldIssue | null {
  const found = findUnsafeJson(value)
  if (!found) return null
  const path = [prefix, ...found.path.map(String)].filter((k) => k !== '').join('.') || '(body)'
  return { path, message: found.message }
}

/**
 * The same check as a valibot action, for payloads that arrive without the gateway (a BullMQ producer in
 * another language): the issue carries the path, so `toFieldIssues` names the field.
 */
export const jsonSafe = <T>() =>
  v.rawCheck<T>(({ dataset, addIssue }) => {
    if (!dataset.typed) return
    const found = findUnsafeJson(dataset.value)
    if (!found) return
    // valibot's path items; `input` is the checked value (the parents are not kept), enough for the keys.
    const input = dataset.value as Record<string, unknown> & unknown[]
    const [first, ...rest] = found.path.map(
      (key): v.IssuePathItem =>
        typeof key === 'number'
          ? { type: 'array', origin: 'value', input, key, value: undefined }
          : { type: 'object', origin: 'value', input, key, value: undefined },
    )
    addIssue({ message: found.message, ...(first ? { path: [first, ...rest] } : {}) })
  })
