import type * as v from 'valibot'

/** One validation problem, as the API reports it: which field and why. */
export interface FieldIssue {
  path: string
  message: string
}

const pathOf = (issue: v.BaseIssue<unknown>, prefix: string): string => {
  const keys = (issue.path ?? []).map((item) => String(item.key))
  return [prefix, ...keys].filter((k) => k !== '').join('.') || '(body)'
}

/** valibot's own messages (`Invalid type: Expected ... but received 12`); ours never start like this. */
const DEFAULT_MESSAGE = /^Invalid \w+: /

/**
 * The reason of one issue, built from what the schema expected and never from what it received: valibot's
 * default messages end with the received value (`Received Infinity`, `but received "sk-..."`), and a
 * secret pasted into the wrong field must not come back in the error. Messages written in schema/ are
 * static text and are kept.
 */
function reasonOf(issue: v.BaseIssue<unknown>): string {
  if (issue.type === 'strict_object' && issue.expected === 'never') return 'unknown field'
  if (issue.kind === 'schema' && issue.received === 'undefined') return 'is required'
  if (!DEFAULT_MESSAGE.test(issue.message)) return issue.message
  const expected = issue.expected
  switch (issue.type) {
    case 'integer':
      return 'must be an integer'
    case 'finite':
      return 'must be a finite number'
    case 'min_value':
    case 'max_value':
    case 'gt_value':
    case 'lt_value':
      return `must be ${expected}`
    case 'min_length':
    case 'max_length':
    case 'length':
      return `length must be ${expected}`
    case 'regex':
      return 'has an invalid format'
  }
  if (issue.kind === 'schema' && expected) return `must be ${expected}`
  return 'is not valid'
}

/**
 * Turns valibot issues into `{path, message}` pairs. Messages never carry the received value, so a
 * secret pasted into the wrong field is not echoed back.
 */
export function toFieldIssues(issues: readonly v.BaseIssue<unknown>[], prefix = ''): FieldIssue[] {
  return issues.flatMap(deepest).map((issue) => ({ path: pathOf(issue, prefix), message: reasonOf(issue) }))
}

/**
 * A union none of whose options matched reports only "must be (string | Object)". The options that got
 * further than the union's own level (an object whose node 3 lacks `class_type`) say what is wrong.
 */
function deepest(issue: v.BaseIssue<unknown>): v.BaseIssue<unknown>[] {
  if (issue.type !== 'union' || !issue.issues) return [issue]
  // An option's issues have paths relative to the union's own value.
  const deeper = issue.issues.filter((sub) => (sub.path?.length ?? 0) > 0)
  if (deeper.length === 0) return [issue]
  const base = issue.path ?? []
  return deeper
    .map((sub) => ({ ...sub, path: [...base, ...(sub.path ?? [])] }) as v.BaseIssue<unknown>)
    .flatMap(deepest)
}

export const describeIssues = (issues: FieldIssue[]): string =>
  issues.map((i) => `${i.path}: ${i.message}`).join('; ')
