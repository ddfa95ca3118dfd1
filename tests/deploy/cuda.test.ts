import { spawn } from 'node:child_process'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { repoRoot, run, which } from './helpers.ts'

const nvcc = which('nvcc')
const make = which('make')
const missing = !nvcc
  ? 'nvcc is not on PATH (install the CUDA toolkit)'
  : !make
    ? 'make is not on PATH'
    : undefined
const suiteName = missing ? `cuda programs (skipped: ${missing})` : 'cuda programs (nvcc, cuda/Makefile)'

const UUID = /^GPU-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/

interface ProbeDevice {
  index: number
  uuid: string
  name: string
  freeMiB: number
  totalMiB: number
}
interface ProbeOutput {
  devices: ProbeDevice[]
  driverVersion: number
  runtimeVersion: number
  error?: { code: string; message: string }
}

describe.skipIf(missing !== undefined)(suiteName, () => {
  let out: string
  let probe: ProbeOutput | undefined
  let hasGpu = false

  beforeAll(async () => {
    out = await mkdtemp(path.join(tmpdir(), 'gpu-jobs-cuda-'))
    // The Makefile's full architecture list: this is what fails when an nvcc drops an architecture.
    const build = await run(make as string, ['-C', path.join(repoRoot, 'cuda'), `OUT=${out}`], {
      timeoutMs: 300_000,
    })
    if (build.code !== 0) throw new Error(`make failed (${build.code}):\n${build.stdout}\n${build.stderr}`)
  }, 300_000)

  afterAll(async () => {
    if (out) await rm(out, { recursive: true, force: true })
  })

  it('probe prints the devices as JSON, or a JSON error and exit 2 without one', async () => {
    const result = await run(path.join(out, 'probe'), [])
    expect([0, 2], result.stderr).toContain(result.code)
    probe = JSON.parse(result.stdout.trim()) as ProbeOutput
    expect(Number.isInteger(probe.driverVersion)).toBe(true)
    expect(probe.runtimeVersion).toBeGreaterThan(0)
    if (result.code === 2) {
      expect(probe.devices).toEqual([])
      expect(probe.error?.code).toMatch(/^(no_device|insufficient_driver|cuda_error)$/)
      expect(probe.error?.message.length).toBeGreaterThan(0)
      return
    }
    hasGpu = true
    expect(probe.devices.length).toBeGreaterThan(0)
    probe.devices.forEach((device, i) => {
      expect(device.index).toBe(i)
      expect(device.uuid).toMatch(UUID)
      expect(device.name.length).toBeGreaterThan(0)
      expect(device.totalMiB).toBeGreaterThan(0)
      expect(device.freeMiB).toBeLessThanOrEqual(device.totalMiB)
    })
  })

  it('workload refuses bad arguments', async () => {
    const noArgs = await run(path.join(out, 'workload'), [])
    expect(noArgs.code).toBe(1)
    expect(noArgs.stderr).toContain('usage: workload --mib N --seconds S')
    const bad = await run(path.join(out, 'workload'), ['--mib', 'lots', '--seconds', '1'])
    expect(bad.code).toBe(1)
    expect(bad.stderr).toContain('bad argument --mib lots')
  })

  it('workload exits 2 without a GPU, or holds memory, reports progress and says done', async () => {
    const result = await run(path.join(out, 'workload'), ['--mib', '64', '--seconds', '2'])
    if (!hasGpu) {
      expect(result.code).toBe(2)
      return
    }
    expect(result.code, result.stderr).toBe(0)
    const lines = result.stdout.trim().split('\n')
    expect(lines[0]).toMatch(/^progress 0\.0 allocated=64MiB elapsed=0\.\ds$/)
    expect(
      lines.filter((l) => /^progress \d+\.\d allocated=64MiB elapsed=\d+\.\ds$/.test(l)).length,
    ).toBeGreaterThan(1)
    expect(lines.at(-2)).toMatch(/^progress 100\.0 /)
    expect(lines.at(-1)).toBe('done')
  })

  it('workload frees its memory and exits 143 on SIGTERM', async ({ skip }) => {
    if (!hasGpu) skip('no GPU here: SIGTERM handling needs a running kernel')
    const child = spawn(path.join(out, 'workload'), ['--mib', '64', '--seconds', '60'], {
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    let stdout = ''
    let stderr = ''
    child.stderr.on('data', (chunk: Buffer) => {
      stderr += chunk.toString()
    })
    await new Promise<void>((resolve, reject) => {
      child.stdout.on('data', (chunk: Buffer) => {
        stdout += chunk.toString()
        if (stdout.includes('progress')) resolve()
      })
      child.on('exit', () => reject(new Error(`workload exited early: ${stderr}`)))
    })
    const started = Date.now()
    child.kill('SIGTERM')
    const code = await new Promise<number | null>((resolve) => child.on('exit', (c) => resolve(c)))
    expect(code).toBe(143)
    expect(Date.now() - started).toBeLessThan(5_000)
    expect(stderr).toContain('memory freed')
    expect(stdout).not.toContain('done')
  })
})
