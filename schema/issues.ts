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

/**
 * Turns valibot issues into `{path, message}` pairs. Messages never carry the received value, so a
 * secret pasted into the wrong field is not echoed back.
 */
export function toFieldIssues(issues: readonly v.BaseIssue<unknown>[], prefix = ''): FieldIssue[] {
  return issues.map((issue) => {
    let message: string
    if (issue.type === 'strict_object' && issue.expected === 'never') message = 'unknown field'
    else if (issue.kind === 'schema' && issue.received === 'undefined') message = 'is required'
    else if (issue.kind === 'schema' && issue.type !== 'union') message = `must be ${issue.expected}`
    else message = issue.message.replace(/:? but received .*$/s, '').replace(/^Invalid \w+: /, '')
    return { path: pathOf(issue, prefix), message }
  })
}

export const describeIssues = (issues: FieldIssue[]): string =>
  issues.map((i) => `${i.path}: ${i.message}`).join('; ')
