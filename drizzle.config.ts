import { defineConfig } from 'drizzle-kit'

export default defineConfig({
  dialect: 'postgresql',
  schema: './schema/db/tables.ts',
  out: './schema/migrations',
})
