import type { JobType } from '../schema/params/index.ts'
import renderVideo from './render_video/index.ts'
import type { AnyHandler } from './sdk/define.ts'
import trainLora from './train_lora/index.ts'
import trainVoice from './train_voice/index.ts'

/**
 * Every handler, listed by hand (no discovery by glob): adding a job type means adding it here, and a
 * guard test fails when a folder is missing from this list.
 */
export const handlers: readonly AnyHandler[] = [trainLora, trainVoice, renderVideo] as unknown as AnyHandler[]

export function handlerFor(type: JobType): AnyHandler {
  const handler = handlers.find((h) => h.type === type)
  if (!handler) throw new Error(`no handler for job type "${type}"`)
  return handler
}
