import { describe, expect, it } from 'vitest'
import { defaultEngineFor, ENGINE_SETUP, ENGINES, isEngineOf, withDefaultEngine } from './engines.ts'
import { JOB_TYPES } from './params/index.ts'

describe('withDefaultEngine', () => {
  it('fills in DEFAULT_ENGINE_<TYPE> when the params name no engine', () => {
    expect(withDefaultEngine('train_lora', { baseModel: 'sd15' }, { train_lora: 'kohya' })).toEqual({
      baseModel: 'sd15',
      engine: 'kohya',
    })
    // Another type's default does not leak over.
    expect(withDefaultEngine('train_voice', { speakerName: 'a' }, { train_lora: 'kohya' })).toEqual({
      speakerName: 'a',
      engine: 'simulate',
    })
  })

  it("falls back to the type's first engine, simulate, when no default is set", () => {
    for (const type of JOB_TYPES) expect(withDefaultEngine(type, {}, {})).toEqual({ engine: 'simulate' })
  })

  it('keeps the engine a job names, even a wrong one (the params schema refuses it by name)', () => {
    const named = { engine: 'simulate' }
    expect(withDefaultEngine('train_lora', named, { train_lora: 'kohya' })).toBe(named)
    const wrong = { engine: 'comfyui' }
    expect(withDefaultEngine('train_lora', wrong, { train_lora: 'kohya' })).toBe(wrong)
  })

  it('leaves what is not a params object to the schema, without throwing', () => {
    for (const bad of [null, 'x', 3, ['a']])
      expect(withDefaultEngine('render_video', bad, { render_video: 'comfyui' })).toBe(bad)
  })

  it('does not change the params it is given', () => {
    const params = { frames: 4 }
    withDefaultEngine('render_video', params, { render_video: 'comfyui' })
    expect(params).toEqual({ frames: 4 })
  })
})

describe('engine names', () => {
  it("ignores a default that is not one of the type's engines", () => {
    expect(defaultEngineFor('train_lora', { train_lora: 'f5tts' })).toBe('simulate')
    expect(isEngineOf('train_lora', 'f5tts')).toBe(false)
    expect(isEngineOf('train_voice', 'f5tts')).toBe(true)
  })

  it('says for every real engine what to configure, naming its variables', () => {
    expect(ENGINE_SETUP.kohya).toContain('KOHYA_DIR')
    expect(ENGINE_SETUP.f5tts).toContain('F5TTS_DIR')
    expect(ENGINE_SETUP.comfyui).toContain('COMFYUI_URL')
    for (const engines of Object.values(ENGINES))
      for (const e of engines) expect(ENGINE_SETUP[e]).toBeTruthy()
  })
})
