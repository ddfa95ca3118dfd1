import * as v from 'valibot'
import { describe, expect, it } from 'vitest'
import { ProgressEvent, ProgressMetrics } from './events.ts'

describe('ProgressMetrics', () => {
  it('takes up to 16 finite numbers with identifier-like names', () => {
    expect(v.is(ProgressMetrics, { loss: 0.34, 'lr.unet': 1e-4, epoch: 2 })).toBe(true)
    const sixteen = Object.fromEntries(Array.from({ length: 16 }, (_, i) => [`m${i}`, i]))
    expect(v.is(ProgressMetrics, sixteen)).toBe(true)
  })
  it.each([
    ['NaN', { loss: Number.NaN }],
    ['Infinity', { loss: Number.POSITIVE_INFINITY }],
    ['a string value', { loss: '0.3' }],
    ['a name with a space', { 'my loss': 1 }],
    ['an empty name', { '': 1 }],
    ['17 entries', Object.fromEntries(Array.from({ length: 17 }, (_, i) => [`m${i}`, i]))],
  ])('refuses %s', (_, metrics) => {
    expect(v.is(ProgressMetrics, metrics)).toBe(false)
  })
  it('is optional on an event, which keeps its shape without it', () => {
    const event = {
      jobId: 'j1',
      status: 'running',
      progress: 10,
      message: 'Epoch 1/2 - loss=0.3',
      timestamp: new Date().toISOString(),
      seq: 3,
      type: 'train_lora',
      attempt: 1,
    }
    expect(v.parse(ProgressEvent, event)).toEqual(event)
    expect(v.parse(ProgressEvent, { ...event, metrics: { loss: 0.3 } }).metrics).toEqual({ loss: 0.3 })
  })
})
