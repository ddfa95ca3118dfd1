import { describe, expect, it } from 'vitest'
import { prettyLine } from './runtime.ts'

const entry = (fields: Record<string, unknown>) =>
  JSON.stringify({ level: 30, time: Date.UTC(2026, 0, 1, 12, 0, 0, 0), pid: 1, name: 'gpu-jobs', ...fields })

describe('readable log lines cannot be forged', () => {
  // Every character that moves the cursor, ends a line or starts a terminal escape: C0, DEL, C1, and the
  // Unicode line and paragraph separators.
  const controls = [
    ...Array.from({ length: 0x20 }, (_, i) => String.fromCharCode(i)),
    '\u007f',
    ...Array.from({ length: 0x20 }, (_, i) => String.fromCharCode(0x80 + i)),
    '\u2028',
    '\u2029',
  ]
  const forged = 'x\n12:00:00.000 INFO  [gateway] \u001b[31mforged'

  it('escapes a key with a newline and an ANSI escape', () => {
    const line = prettyLine(entry({ msg: 'ok', [forged]: 'v' }))
    expect(line.slice(0, -1)).not.toContain('\n')
    expect(line).not.toContain('\u001b')
    expect(line).toContain('x\\n12:00:00.000 INFO  [gateway] \\u001b[31mforged=v')
    expect(line.endsWith('\n')).toBe(true)
  })

  it.each([
    ['message', (c: string) => ({ msg: `a${c}b` })],
    ['key', (c: string) => ({ msg: 'ok', [`k${c}`]: 1 })],
    ['string value', (c: string) => ({ msg: 'ok', k: `a${c}b` })],
    ['object value', (c: string) => ({ msg: 'ok', k: { [`n${c}`]: `a${c}b` } })],
    ['component', (c: string) => ({ msg: 'ok', component: `g${c}w` })],
  ])('escapes every control character in the %s', (_where, make) => {
    for (const c of controls) {
      const line = prettyLine(entry(make(c)))
      const body = line.slice(0, -1)
      for (const bad of controls) expect(body.includes(bad), `U+${c.charCodeAt(0).toString(16)}`).toBe(false)
    }
  })

  it('keeps ordinary text, Unicode included, as it is', () => {
    expect(prettyLine(entry({ msg: 'Epoch 3/5 – loss=0.34 ✓', jobId: 'ä-1' }))).toBe(
      '12:00:00.000 INFO  [gpu-jobs] Epoch 3/5 – loss=0.34 ✓  jobId=ä-1\n',
    )
  })
})
