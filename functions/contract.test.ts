import * as v from 'valibot'
import { describe, expect, it } from 'vitest'
import { JOB_CATALOG, JOB_TYPES, type JobType, PARAMS_BY_TYPE } from '../schema/params/index.ts'
import { handlers } from './index.ts'
import { runHandler } from './sdk/testing.ts'
import {
  expectProgressToEndAt100,
  expectStopsAfterProgress,
  handlerSuite,
  rejectionOf,
} from './test-support.ts'

/**
 * The contract every handler keeps, run over every type of the job catalog: its params schema round-trips
 * with defaults, a run reports monotonic progress ending at 100, returns plain JSON and stores its files,
 * and the job's signal stops it promptly. Each type runs with its catalog entry's `example` params.
 */
const MINIMAL_PARAMS = Object.fromEntries(JOB_TYPES.map((type) => [type, JOB_CATALOG[type].example])) as {
  [T in JobType]: Record<string, unknown>
}

const suite = handlerSuite({ type: 'train_lora' })

describe.each(handlers.map((h) => [h.type, h] as const))('handler contract: %s', (type, handler) => {
  const context = (simulateStepMs = 0) => suite.context(simulateStepMs, { type, jobId: `contract-${type}` })

  it('declares sane limits and uses the schema from schema/', () => {
    expect(handler.params).toBe(PARAMS_BY_TYPE[type])
    expect(handler.timeoutSec).toBeGreaterThan(0)
    expect(handler.maxAttempts).toBeGreaterThanOrEqual(1)
    expect(handler.gpu.vramMb).toBeGreaterThan(0)
  })

  it('round-trips its params schema with defaults filled in, and rejects unknown keys', () => {
    const parsed = v.parse(handler.params, MINIMAL_PARAMS[type])
    expect(parsed).toMatchObject(MINIMAL_PARAMS[type])
    expect(parsed).toHaveProperty('engine', 'simulate')
    expect(v.parse(handler.params, parsed)).toEqual(parsed)
    expect(v.parse(handler.params, JSON.parse(JSON.stringify(parsed)))).toEqual(parsed)
    expect(v.safeParse(handler.params, { ...MINIMAL_PARAMS[type], noSuchParam: 1 }).success).toBe(false)
  })

  it('runs with default params: monotonic progress to 100, a JSON result, files stored', async () => {
    const t = await context()
    const result = await runHandler(handler, MINIMAL_PARAMS[type], t)
    expectProgressToEndAt100(t.progress)
    expect(JSON.parse(JSON.stringify(result))).toEqual(result)
    expect(result).toMatchObject({ engine: 'simulate', simulated: true })
    const files = (result as { files: string[] }).files
    expect(files.length).toBeGreaterThan(0)
    expect([...t.artifacts.files.keys()].sort()).toEqual([...files].sort())
    for (const f of t.artifacts.files.values()) expect(f.record.size).toBeGreaterThan(0)
  })

  it('prints what it reports to the job log: its start, thinned steps, its end (simulate)', async () => {
    const t = await context()
    await runHandler(handler, MINIMAL_PARAMS[type], t)
    const printed = t.logs.filter((l) => l.level === 'info').map((l) => l.msg)
    const reported = t.progress.map((p) => p.message)
    // Every printed line is a reported message, in order; the first and the last are printed.
    expect(printed[0]).toBe(reported[0])
    expect(printed.at(-1)).toBe(reported.at(-1))
    let at = 0
    for (const line of printed) {
      at = reported.indexOf(line, at)
      expect(at, line).toBeGreaterThanOrEqual(0)
    }
    // Thinned like a real engine's progress bar: a handful of lines however many steps there are.
    expect(printed.length).toBeGreaterThanOrEqual(4)
    expect(printed.length).toBeLessThanOrEqual(26)
  })

  it('honours its signal: rejects with the abort reason promptly and stores nothing', async () => {
    const t = await context(5)
    await expectStopsAfterProgress(t, 2, () => runHandler(handler, MINIMAL_PARAMS[type], t))
  })

  it('stops at once when its signal is already aborted', async () => {
    const t = await context()
    const reason = new Error('shutting down')
    t.abort(reason)
    expect(await rejectionOf(runHandler(handler, MINIMAL_PARAMS[type], t))).toBe(reason)
    expect(t.artifacts.files.size).toBe(0)
  })
})
