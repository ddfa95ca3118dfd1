import { defineConfig } from 'vitest/config'

export default defineConfig({
  test: {
    include: ['**/*.test.ts'],
    // tests/engines/real: against the real engines, `npm run test:engines` (vitest.engines.config.ts).
    exclude: ['node_modules/**', 'data/**', 'dist/**', '.device/**', 'tests/engines/real/**'],
    testTimeout: 60_000,
    hookTimeout: 60_000,
    // Integration tests fork real processes and share one Redis and Postgres: keep them apart in time.
    fileParallelism: false,
    // Starts what the run lacks (a private Redis, a Postgres database) unless TEST_REDIS_URL and
    // TEST_DATABASE_URL name them.
    globalSetup: ['tests/helpers/global-setup.ts'],
    pool: 'forks',
  },
})
