import { randomUUID } from 'node:crypto'
import type { Redis } from 'ioredis'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { EventHub } from '../../gateway/hub.ts'
import { statusBodies } from '../../gateway/routes/status.ts'
import { JobStore } from '../../gateway/store.ts'
import { JobState } from '../../gpu-host/state.ts'
import { createRedis } from '../../schema/clients.ts'
import { type Database, openDatabase } from '../../schema/db/connect.ts'
import { emitEvent } from '../../schema/progress-log.ts'
import { completedEvent, isolatedDatabase, TEST_REDIS_URL } from '../helpers/stack.ts'

/**
 * A status read that races a job's end: the row is read (running), then the host writes the row
 * (completed, with its result) and publishes the terminal event, then the body reads the newest event.
 * The body must come from the written row, not say `completed` with the stale row's empty result.
 */
describe('status body at the moment a job ends', () => {
  let db: Awaited<ReturnType<typeof isolatedDatabase>>
  let database: Database
  let redis: Redis

  beforeAll(async () => {
    db = await isolatedDatabase()
    database = await openDatabase({ url: db.url })
    redis = createRedis(TEST_REDIS_URL)
  })
  afterAll(async () => {
    await redis?.quit()
    await database?.close()
    await db?.drop()
  })

  it('reads the row again when the terminal event is newer than the row it read', async () => {
    const store = new JobStore(database.db)
    const host = new JobState(database.db, 'host-a')
    const jobId = `race-${randomUUID()}`
    await store.insert({
      jobId,
      type: 'train_lora',
      params: { baseModel: 'sd15', datasetPath: 'ds' },
      owner: null,
      priority: undefined,
      timeoutSec: undefined,
      maxAttempts: 1,
      outputPrefix: `loras/${jobId}`,
    })
    expect(await host.startAttempt(jobId)).toMatchObject({ status: 'running', attempt: 1 })
    const stale = await store.get(jobId)
    if (!stale) throw new Error('no row')

    const result = { lora: 'loras/x/lora.safetensors' }
    expect(
      await host.finishAttempt(jobId, 1, { status: 'completed', progress: 100, message: 'done', result }),
    ).toBe(true)
    await emitEvent(redis, completedEvent(jobId), { terminal: true })

    const bodies = statusBodies({ store, redis, hub: { onEvent: () => {} } as unknown as EventHub })
    const body = await bodies.body(stale)
    expect(body).toMatchObject({ status: 'completed', progress: 100, result })
    expect(body.finishedAt).not.toBeNull()
  })
})
