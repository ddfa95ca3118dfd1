import { readFile } from 'node:fs/promises'
import { afterAll, describe, expect, it } from 'vitest'
import { type Stack, startStack } from '../helpers/stack.ts'

/** Local addresses that listen on `port`, read from /proc/net/tcp{,6} (e.g. "127.0.0.1", "0.0.0.0", "::"). */
async function listeners(port: number): Promise<string[]> {
  const found: string[] = []
  for (const file of ['/proc/net/tcp', '/proc/net/tcp6']) {
    const text = await readFile(file, 'utf8').catch(() => '')
    for (const line of text.split('\n').slice(1)) {
      const [, local, , state] = line.trim().split(/\s+/)
      if (!local || state !== '0A') continue // 0A: LISTEN
      const [hex = '', portHex = ''] = local.split(':')
      if (Number.parseInt(portHex, 16) !== port) continue
      if (hex.length === 8)
        found.push(
          (hex.match(/../g) ?? [])
            .reverse()
            .map((b) => Number.parseInt(b, 16))
            .join('.'),
        )
      else found.push(/^0+$/.test(hex) ? '::' : hex)
    }
  }
  return found
}

const stacks: Stack[] = []
afterAll(async () => {
  for (const s of stacks) await s.close()
})

describe('GPU host /metrics, /healthz, /readyz bind METRICS_HOST', () => {
  it('listens on loopback only when METRICS_HOST is unset, like the gateway', async () => {
    const stack = await startStack()
    stacks.push(stack)
    expect(await listeners(stack.hostPort)).toEqual(['127.0.0.1'])
    expect((await fetch(`http://127.0.0.1:${stack.hostPort}/healthz`)).status).toBe(200)
  })

  it('listens where METRICS_HOST says (0.0.0.0 for a Prometheus on another machine)', async () => {
    const stack = await startStack({ env: { METRICS_HOST: '0.0.0.0' } })
    stacks.push(stack)
    expect(await listeners(stack.hostPort)).toEqual(['0.0.0.0'])
    expect((await fetch(`http://127.0.0.1:${stack.hostPort}/metrics`)).status).toBe(200)
  })
})
