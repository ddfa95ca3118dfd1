import { readFileSync } from 'node:fs'
import path from 'node:path'
import { describe, expect, it } from 'vitest'
import { LineSplitter } from '../../functions/sdk/engine-process.ts'
import { KohyaProgress, STEPS_FROM, STEPS_TO } from '../../functions/train_lora/kohya-progress.ts'

const transcript = (name: string) => path.join(import.meta.dirname, 'fake-kohya', 'transcripts', name)

/** Every line of a recorded stream, split as the handler splits a pipe: in one chunk or byte by byte. */
const lines = (file: string, byteByByte = false): string[] => {
  const out: string[] = []
  const splitter = new LineSplitter((line) => out.push(line))
  const bytes = readFileSync(transcript(file))
  if (byteByByte) for (const b of bytes) splitter.write(Buffer.from([b]))
  else splitter.write(bytes)
  splitter.end()
  return out
}

const pct = (step: number, total: number) =>
  Number((STEPS_FROM + ((STEPS_TO - STEPS_FROM) * step) / total).toFixed(2))

describe('kohya progress from the recorded runs', () => {
  it.each([false, true])(
    'run3 (rich logging) stderr: the steps bar and avr_loss, only them (byte by byte: %s)',
    (bytewise) => {
      const p = new KohyaProgress(1)
      const updates = lines('train_network_run3.stderr.raw', bytewise)
        .map((l) => p.push('stderr', l))
        .filter((u) => u !== null)
      // The other bars (image sizes, captions, pipeline loading) and the rich log records move nothing.
      expect(updates).toEqual([
        { percent: pct(0, 3), message: 'Epoch 1/1' },
        { percent: pct(1, 3), message: 'Epoch 1/1' },
        { percent: pct(1, 3), message: 'Epoch 1/1 - loss=1.12' },
        { percent: pct(2, 3), message: 'Epoch 1/1 - loss=1.12' },
        { percent: pct(2, 3), message: 'Epoch 1/1 - loss=1.16' },
        { percent: pct(3, 3), message: 'Epoch 1/1 - loss=1.16' },
        { percent: pct(3, 3), message: 'Epoch 1/1 - loss=1.2' },
      ])
      expect(p.totalSteps).toBe(3)
    },
  )

  it('run3 stdout: epoch line and checkpoint names (basename only)', () => {
    const p = new KohyaProgress()
    const messages = lines('train_network_run3.stdout')
      .map((l) => p.push('stdout', l)?.message)
      .filter((m) => m !== undefined)
    expect(messages).toEqual([
      'Epoch 1/1',
      'saving checkpoint: tinylora-step00000002.safetensors',
      'saving checkpoint: tinylora.safetensors',
    ])
  })

  it('run4 (--console_log_simple): the log records on stdout do not count; epochs 1/2 and 2/2 with their losses', () => {
    const out = lines('train_network_run4.stdout')
    const err = lines('train_network_run4.stderr.raw')
    const p = new KohyaProgress()
    const seen: string[] = []
    const feed = (stream: 'stdout' | 'stderr', l: string) => {
      const u = p.push(stream, l)
      if (u) seen.push(`${u.percent} ${u.message}`)
    }
    // Interleave as the trainer prints: stdout to "epoch 1/2", the bar to 3/6, "epoch 2/2", the rest.
    const epoch2 = out.indexOf('epoch 2/2')
    const bar4 = err.findIndex((l) => l.includes('| 4/6 ['))
    for (const l of out.slice(0, out.indexOf('epoch 1/2') + 1)) feed('stdout', l)
    for (const l of err.slice(0, bar4)) feed('stderr', l)
    for (const l of out.slice(out.indexOf('epoch 1/2') + 1, epoch2 + 1)) feed('stdout', l)
    for (const l of err.slice(bar4)) feed('stderr', l)
    for (const l of out.slice(epoch2 + 1)) feed('stdout', l)
    expect(seen).toContain(`${pct(3, 6)} Epoch 1/2 - loss=1.2`)
    expect(seen).toContain(`${pct(4, 6)} Epoch 2/2 - loss=1.2`)
    expect(seen.at(-2)).toBe(`${pct(6, 6)} Epoch 2/2 - loss=1.22`)
    expect(seen.at(-1)).toBe(`${pct(6, 6)} saving checkpoint: tinylora.safetensors`)
    expect(seen.some((s) => s.includes('000001.safetensors'))).toBe(true)
    const percents = seen.map((s) => Number(s.split(' ')[0]))
    expect(percents).toEqual([...percents].sort((a, b) => a - b))
  })

  it('takes nan and exponent losses, and ignores validation bars', () => {
    const p = new KohyaProgress(2)
    expect(
      p.push('stderr', 'validation steps:  50%|█████     | 1/2 [00:01<00:01,  1.0s/it, val_loss=0.3]'),
    ).toBeNull()
    expect(
      p.push('stderr', 'steps:  10%|█         | 1/10 [00:01<00:09,  1.0s/it, avr_loss=nan]')?.message,
    ).toBe('Epoch 1/2 - loss=nan')
    expect(
      p.push('stderr', 'steps:  20%|██        | 2/10 [00:02<00:08,  1.0s/it, avr_loss=3.4e-05]')?.message,
    ).toBe('Epoch 1/2 - loss=3.4e-05')
  })
})
