import { chmod, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { startGpuLoad } from './gpu-load.ts'

let dir: string
const logs: string[] = []
const log = { debug: () => {}, info: (m: string) => logs.push(m), warn: () => {}, error: () => {} }

beforeAll(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'gpu-bin-'))
  // A stand-in for cuda/workload (no GPU here): records its arguments, then runs until stopped.
  await writeFile(path.join(dir, 'workload'), `#!/bin/sh\necho "$@" > "${dir}/args"\nexec sleep 30\n`)
  await chmod(path.join(dir, 'workload'), 0o755)
  process.env.GPU_JOBS_BIN = dir
})
afterAll(async () => {
  delete process.env.GPU_JOBS_BIN
  await rm(dir, { recursive: true, force: true })
})

describe('GPU load beside a simulated job', () => {
  it('does nothing without a GPU', async () => {
    expect(
      await startGpuLoad(
        { gpu: { index: null, uuid: null, name: null, vramTotalMb: null }, log },
        { seconds: 5, vramMb: 8000 },
      ),
    ).toBeNull()
  })

  it('runs the workload with a quarter of the card at most, and stops it', async () => {
    const gpu = { index: 0, uuid: 'GPU-1234', name: 'H100', vramTotalMb: 16_000 }
    const load = await startGpuLoad({ gpu, log }, { seconds: 2.5, vramMb: 12_000 })
    expect(load).not.toBeNull()
    await sleep(300)
    expect((await readFile(path.join(dir, 'args'), 'utf8')).trim()).toBe('--mib 4000 --seconds 3')
    const started = Date.now()
    await load?.stop()
    expect(Date.now() - started).toBeLessThan(2000)
    expect(logs.some((l) => l.includes('holding 4000 MiB'))).toBe(true)
  })
})
