import { chmod, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises'
import { createServer, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { engineSettings } from '../schema/engines.ts'
import {
  describeEngines,
  detectEngines,
  engineWaitDelay,
  F5TTS_SCRIPT,
  KOHYA_SCRIPT,
  probeComfyui,
  resolveExecutable,
} from './engines.ts'

let dir: string
let kohyaDir: string
let f5ttsDir: string
let binDir: string

beforeAll(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'engines-'))
  kohyaDir = path.join(dir, 'sd-scripts')
  f5ttsDir = path.join(dir, 'F5-TTS')
  binDir = path.join(dir, 'bin')
  await mkdir(kohyaDir, { recursive: true })
  await writeFile(path.join(kohyaDir, KOHYA_SCRIPT), '')
  await mkdir(path.dirname(path.join(f5ttsDir, F5TTS_SCRIPT)), { recursive: true })
  await writeFile(path.join(f5ttsDir, F5TTS_SCRIPT), '')
  await mkdir(binDir)
  await writeFile(path.join(binDir, 'venv-python'), '#!/bin/sh\n')
  await chmod(path.join(binDir, 'venv-python'), 0o755)
  await writeFile(path.join(binDir, 'not-executable'), '')
})
afterAll(() => rm(dir, { recursive: true, force: true }))

describe('resolveExecutable', () => {
  it('finds a bare name on PATH and a path as given', async () => {
    expect(await resolveExecutable('venv-python', `/nonexistent:${binDir}`)).toBe(
      path.join(binDir, 'venv-python'),
    )
    expect(await resolveExecutable(path.join(binDir, 'venv-python'))).toBe(path.join(binDir, 'venv-python'))
  })

  it('refuses a file that is not executable, a directory, a missing name and an empty one', async () => {
    expect(await resolveExecutable('not-executable', binDir)).toBeUndefined()
    expect(await resolveExecutable(path.join(binDir, 'not-executable'))).toBeUndefined()
    expect(await resolveExecutable(binDir)).toBeUndefined()
    expect(await resolveExecutable('venv-python', '/nonexistent')).toBeUndefined()
    expect(await resolveExecutable('', binDir)).toBeUndefined()
  })
})

describe('detectEngines', () => {
  it('has only simulate with nothing configured, and says what each real engine lacks', async () => {
    const found = await detectEngines(engineSettings({ simulateStepMs: 1 }), binDir)
    expect(found.engines).toEqual({
      train_lora: ['simulate'],
      train_voice: ['simulate'],
      render_video: ['simulate'],
    })
    expect(found.missing).toEqual({
      comfyui: 'COMFYUI_URL is not set',
      kohya: 'KOHYA_DIR is not set',
      f5tts: 'F5TTS_DIR is not set',
    })
    expect(describeEngines(found)).toBe(
      'train_lora: simulate; train_voice: simulate; render_video: simulate (lacking comfyui: COMFYUI_URL is not set; kohya: KOHYA_DIR is not set; f5tts: F5TTS_DIR is not set)',
    )
  })

  it('has every engine whose checkout and interpreter are there', async () => {
    const found = await detectEngines(
      engineSettings({
        simulateStepMs: 1,
        comfyuiUrl: 'http://127.0.0.1:1',
        kohyaDir,
        kohyaPython: 'venv-python',
        f5ttsDir,
        f5ttsPython: path.join(binDir, 'venv-python'),
      }),
      binDir,
    )
    expect(found.engines).toEqual({
      train_lora: ['simulate', 'kohya'],
      train_voice: ['simulate', 'f5tts'],
      render_video: ['simulate', 'comfyui'],
    })
    expect(found.missing).toEqual({})
  })

  it('lacks kohya and f5tts when the checkout is not one or the interpreter does not resolve', async () => {
    const found = await detectEngines(
      engineSettings({
        simulateStepMs: 1,
        // Swapped: neither holds the other's script.
        kohyaDir: f5ttsDir,
        f5ttsDir,
        f5ttsPython: 'no-such-python',
      }),
      binDir,
    )
    expect(found.engines.train_lora).toEqual(['simulate'])
    expect(found.engines.train_voice).toEqual(['simulate'])
    expect(found.missing.kohya).toBe(`KOHYA_DIR (${f5ttsDir}) has no train_network.py`)
    expect(found.missing.f5tts).toBe('F5TTS_PYTHON (no-such-python) is not an executable on PATH')
  })
})

describe('engineWaitDelay', () => {
  const bounds = { baseMs: 5000, maxMs: 60_000 }
  it('waits as long as the job has waited, from 5 s doubling to 60 s', () => {
    let waited = 0
    const delays: number[] = []
    for (let i = 0; i < 6; i++) {
      const d = engineWaitDelay(waited, bounds)
      delays.push(d)
      waited += d
    }
    expect(delays).toEqual([5000, 5000, 10_000, 20_000, 40_000, 60_000])
    // A clock that went back (a job timestamp from another host) still waits the base.
    expect(engineWaitDelay(-10_000, bounds)).toBe(5000)
  })
})

describe('probeComfyui', () => {
  let server: Server
  let url: string
  let status = 200
  beforeAll(async () => {
    server = createServer((req, res) => {
      res.statusCode = req.url === '/system_stats' ? status : 404
      res.end('{}')
    })
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
    url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`
  })
  afterAll(() => new Promise<void>((r) => server.close(() => r())))

  it('is ok when /system_stats answers, with or without a trailing slash', async () => {
    status = 200
    expect(await probeComfyui(url)).toBe('ok')
    expect(await probeComfyui(`${url}/`)).toBe('ok')
  })

  it('names ComfyUI and COMFYUI_URL when it answers an error or is not there', async () => {
    status = 503
    expect(await probeComfyui(url)).toBe('ComfyUI at COMFYUI_URL answered 503')
    const closed = createServer()
    await new Promise<void>((r) => closed.listen(0, '127.0.0.1', r))
    const port = (closed.address() as AddressInfo).port
    await new Promise<void>((r) => closed.close(() => r()))
    expect(await probeComfyui(`http://127.0.0.1:${port}`)).toBe(
      'ComfyUI at COMFYUI_URL is unreachable (ECONNREFUSED)',
    )
  })

  it('gives up after its bound when ComfyUI accepts but never answers', async () => {
    const silent = createServer(() => {})
    await new Promise<void>((r) => silent.listen(0, '127.0.0.1', r))
    const started = Date.now()
    expect(await probeComfyui(`http://127.0.0.1:${(silent.address() as AddressInfo).port}`, 200)).toBe(
      'ComfyUI at COMFYUI_URL is unreachable (no answer in 200 ms)',
    )
    expect(Date.now() - started).toBeLessThan(2000)
    silent.closeAllConnections()
    await new Promise<void>((r) => silent.close(() => r()))
  })
})
