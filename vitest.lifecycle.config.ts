import { defineConfig } from 'vitest/config'

// `npm run test:lifecycle`: the lifecycle's rules alone (schema/jobs/lifecycle.test.ts), with no global
// set-up: no Redis, Postgres or child process is started or needed.
export default defineConfig({
  test: { include: ['schema/jobs/lifecycle.test.ts'] },
})
