import { defineConfig } from 'vitest/config'

/**
 * `npm run test:engines`: the engine adapters against real ComfyUI, kohya sd-scripts and F5-TTS, each file
 * skipped with its reason unless its engine is configured (COMFYUI_URL, KOHYA_DIR, F5TTS_DIR, MODELS_DIR).
 * Real engines on a CPU are slow: long timeouts, one file at a time.
 */
export default defineConfig({
  test: {
    include: ['tests/engines/real/**/*.test.ts'],
    testTimeout: 20 * 60_000,
    hookTimeout: 5 * 60_000,
    fileParallelism: false,
    globalSetup: ['tests/helpers/global-setup.ts'],
    pool: 'forks',
  },
})
