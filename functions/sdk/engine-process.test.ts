import { readFile } from 'node:fs/promises'
import { setTimeout as sleep } from 'node:timers/promises'
import { describe, expect, it } from 'vitest'
import { LineSplitter, runEngineProcess } from './engine-process.ts'

const alive = async (pid: number): Promise<boolean> => {
  const stat = await readFile(`/proc/${pid}/stat`, 'utf8').catch(() => '')
  const state = stat.slice(stat.lastIndexOf(')') + 2).split(' ')[0]
  return stat !== '' && state !== 'Z' && state !== 'X'
}

const split = (chunks: (string | Buffer)[]) => {
  const lines: [string, boolean][] = []
  const s = new LineSplitter((line, byCr) => lines.push([line, byCr]))
  for (const c of chunks) s.write(c)
  s.end()
  return lines
}

describe('LineSplitter', () => {
  it('splits on \\n, \\r\\n and a lone \\r, marking the \\r redraws', () => {
    expect(split(['a\nb\r\nc\rd\r\re'])).toEqual([
      ['a', false],
      ['b', false],
      ['c', true],
      ['d', true],
      ['e', false],
    ])
  })

  it('gives the same lines whatever the chunk boundaries (\\r\\n and UTF-8 split across chunks)', () => {
    const text = Buffer.from('\rsteps:  33%|███▎      | 1/3 [00:01<00:03]\r\nepoch 1/1\n学習開始\r\nend')
    const whole = split([text])
    const bytes = [...text].map((b) => Buffer.from([b]))
    expect(split(bytes)).toEqual(whole)
    expect(whole.map(([l]) => l)).toEqual([
      'steps:  33%|███▎      | 1/3 [00:01<00:03]',
      'epoch 1/1',
      '学習開始',
      'end',
    ])
  })
})

describe('runEngineProcess', () => {
  it('passes lines of both streams, the env on top of ours, and a bounded stderr tail without redraws', async () => {
    const lines: string[] = []
    const script = [
      'process.stdout.write("env=" + process.env.ENGINE_X + "/" + (process.env.ENGINE_GONE ?? "unset") + "\\n")',
      'for (let i = 0; i < 150; i++) process.stderr.write("line " + i + "\\n")',
      'process.stderr.write("\\rbar 1/3\\rbar 2/3\\rbar 3/3\\nTraceback: boom\\n")',
      'process.exitCode = 3',
    ].join(';')
    process.env.ENGINE_GONE = 'set'
    const run = await runEngineProcess({
      command: process.execPath,
      args: ['-e', script],
      env: { ENGINE_X: 'yes', ENGINE_GONE: undefined },
      onLine: (stream, line) => lines.push(`${stream}:${line}`),
      echo: false,
    })
    delete process.env.ENGINE_GONE
    expect(run).toMatchObject({ exitCode: 3, signal: null, aborted: false, killed: false })
    expect(lines[0]).toBe('stdout:env=yes/unset')
    expect(lines).toContain('stderr:bar 2/3')
    expect(run.tail).toHaveLength(100)
    expect(run.tail.slice(-3)).toEqual(['line 149', 'bar 3/3', 'Traceback: boom'])
  })

  it('hands over a \\r redraw when it is drawn (onPartial), not only when the next one ends it', async () => {
    const events: string[] = []
    const script =
      'process.stderr.write("\\rbar 1/2"); setTimeout(() => process.stderr.write("\\rbar 2/2\\n"), 300)'
    await runEngineProcess({
      command: process.execPath,
      args: ['-e', script],
      onLine: (_s, line) => events.push(`line ${line} ${Math.round(performance.now())}`),
      onPartial: (_s, text) => events.push(`partial ${text} ${Math.round(performance.now())}`),
    })
    const at = (prefix: string) =>
      Number(
        events
          .find((e) => e.startsWith(prefix))
          ?.split(' ')
          .at(-1),
      )
    expect(events.map((e) => e.split(' ').slice(0, -1).join(' '))).toEqual([
      'partial bar 1/2',
      'line bar 1/2',
      'line bar 2/2',
    ])
    expect(at('line bar 1/2') - at('partial bar 1/2')).toBeGreaterThan(200)
  })

  it("echoes the engine's lines to the job process's streams (the job's logs), thinning \\r redraws", async () => {
    const out = { stdout: '', stderr: '' }
    const capture = (name: keyof typeof out) => ({
      write: (chunk: string | Uint8Array) => {
        out[name] += String(chunk)
        return true
      },
    })
    // 500 redraws of a bar in well under REDRAW_ECHO_MS, ended by its final state and a newline; then a
    // second bar left on a redraw when the engine exits.
    const script = [
      'process.stdout.write("loading model\\n")',
      'for (let i = 1; i <= 500; i++) process.stderr.write("\\rsteps " + i + "/500")',
      'process.stderr.write("\\n")',
      'process.stderr.write("Traceback: boom\\n")',
      'for (let i = 1; i <= 50; i++) process.stderr.write("\\rsaving " + i + "/50")',
    ].join(';')
    const run = await runEngineProcess({
      command: process.execPath,
      args: ['-e', script],
      echo: { stdout: capture('stdout'), stderr: capture('stderr') },
    })
    expect(run.exitCode).toBe(0)
    expect(out.stdout).toBe('loading model\n')
    expect(out.stderr.split('\n')).toEqual([
      'steps 1/500',
      'steps 500/500',
      'Traceback: boom',
      'saving 1/50',
      'saving 50/50',
      '',
    ])
  })

  it('rejects with the spawn error when the command does not exist', async () => {
    await expect(runEngineProcess({ command: '/nonexistent/python3', args: [] })).rejects.toMatchObject({
      code: 'ENOENT',
    })
  })

  it('on abort stops the launcher and the grandchild it started (SIGKILL for one that ignores SIGTERM)', async () => {
    const controller = new AbortController()
    const pids: number[] = []
    // A launcher that, like accelerate, does not pass SIGTERM on: its child ignores SIGTERM outright.
    const grandchild =
      'process.on("SIGTERM", () => {}); console.log("child " + process.pid); setInterval(() => {}, 1000)'
    const launcher = [
      'const { spawn } = require("node:child_process")',
      `spawn(process.execPath, ["-e", ${JSON.stringify(grandchild)}], { stdio: "inherit" })`,
      'console.log("launcher " + process.pid)',
      'setInterval(() => {}, 1000)',
    ].join(';')
    const started = performance.now()
    const run = await runEngineProcess({
      command: process.execPath,
      args: ['-e', launcher],
      signal: controller.signal,
      killGraceMs: 300,
      onLine: (_stream, line) => {
        const m = /^(launcher|child) (\d+)$/.exec(line)
        if (m) pids.push(Number(m[2]))
        if (pids.length === 2) controller.abort(new Error('cancelled'))
      },
    })
    expect(run.aborted).toBe(true)
    expect(run.killed).toBe(true)
    expect(performance.now() - started).toBeLessThan(5000)
    expect(pids).toHaveLength(2)
    for (const pid of pids) expect(await alive(pid)).toBe(false)
  })

  it('an abort while the process is still starting stops it too', async () => {
    const controller = new AbortController()
    const run = runEngineProcess({
      command: process.execPath,
      args: ['-e', 'setInterval(() => {}, 1000)'],
      signal: controller.signal,
    })
    controller.abort(new Error('cancelled at once')) // before the 'spawn' event
    const result = await Promise.race([run, sleep(5000, 'still running')])
    expect(result).toMatchObject({ aborted: true, signal: 'SIGTERM' })
  })

  it('a throwing onLine stops the engine and rejects with that error', async () => {
    const err = new Error('parser gave up')
    const run = runEngineProcess({
      command: process.execPath,
      args: ['-e', 'console.log("x"); setInterval(() => {}, 1000)'],
      onLine: () => {
        throw err
      },
    })
    await expect(run).rejects.toBe(err)
  })
})
