import { describe, expect, it } from 'vitest'
import { NonRetryableError, RetryableError } from './errors.ts'

describe('handler errors', () => {
  it('are told apart across copies of the module (a bundled job process and a handler loaded from source)', async () => {
    // A second, separately evaluated copy of errors.ts, as a bundle holds beside the source a handler imports.
    const specifier = `./errors.ts?copy=${Date.now()}`
    const copy = (await import(/* @vite-ignore */ specifier)) as typeof import('./errors.ts')
    expect(copy.NonRetryableError).not.toBe(NonRetryableError)
    const fromCopy = new copy.NonRetryableError('dataset is empty', { reason: 'invalid_dataset' })
    expect(fromCopy instanceof NonRetryableError).toBe(true)
    expect(fromCopy instanceof RetryableError).toBe(false)
    expect(new copy.RetryableError('flaky') instanceof RetryableError).toBe(true)
    expect(new copy.RetryableError('flaky') instanceof NonRetryableError).toBe(false)
    // Still an Error, and plain errors are neither.
    expect(fromCopy instanceof Error).toBe(true)
    expect(new Error('x') instanceof NonRetryableError).toBe(false)
    expect({ name: 'NonRetryableError' } instanceof NonRetryableError).toBe(false)
  })
})
