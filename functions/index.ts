/**
 * Every handler, loaded from the modules the job catalog names (schema/params/catalog.ts): the catalog is
 * the explicit list (no discovery by glob), and a guard test fails when a folder has no entry, an entry's
 * module is missing, or a module's handler is of another type.
 */
import { JOB_CATALOG, JOB_TYPES, type JobType } from '../schema/params/index.ts'
import type { AnyHandler } from './sdk/define.ts'

const isHandlerOf = (type: JobType, value: unknown): value is AnyHandler =>
  typeof value === 'object' &&
  value !== null &&
  (value as { type?: unknown }).type === type &&
  typeof (value as { run?: unknown }).run === 'function'

async function load(type: JobType): Promise<AnyHandler> {
  const module = JOB_CATALOG[type].handler
  // Relative to this file (functions/), so the build rewrites `.ts` to `.js` as it does for static imports.
  const { default: handler } = (await import(/* @vite-ignore */ `../${module}`)) as { default?: unknown }
  if (!isHandlerOf(type, handler))
    throw new Error(`${module} must default-export defineHandler({ type: '${type}', ... })`)
  return handler
}

/** One handler per catalogued type, in catalog order. */
export const handlers: readonly AnyHandler[] = await Promise.all(JOB_TYPES.map(load))

export function handlerFor(type: JobType): AnyHandler {
  const handler = handlers.find((h) => h.type === type)
  if (!handler) throw new Error(`no handler for job type "${type}"`)
  return handler
}
