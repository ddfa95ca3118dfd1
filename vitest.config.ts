import { defineConfig } from 'vitest/config'

export default defineConfig({
  test: {
    include: ['**/*.test.ts'],
    exclude: ['node_modules/**', 'data/**', 'dist/**', '.device/**'],
    testTimeout: 60_000,
    hookTimeout: 60_000,
    // Integration tests fork real processes and share one Redis and Postgres: keep them apart in time.
    fileParallelism: false,
    pool: 'forks',
  },
})
