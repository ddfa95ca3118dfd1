import { expect } from 'vitest'
import { waitFor } from './stack.ts'

/** The status body fields the start-up tests read. */
export interface DemoJobStatus {
  jobId: string
  status: string
  artifacts: { path: string }[]
}

/**
 * Submits a one-epoch LoRA on the demo dataset that `npm start` creates to the gateway at `baseUrl`
 * (expecting 202) and waits until the job has completed.
 *
 * @example const job = await completeDemoJob('http://127.0.0.1:8080', 'the job to complete')
 */
export async function completeDemoJob(baseUrl: string, what: string): Promise<DemoJobStatus> {
  const res = await fetch(`${baseUrl}/api/train`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({
      type: 'train_lora',
      params: { baseModel: 'sd15', datasetPath: 'demo', epochs: 1 },
    }),
  })
  expect(res.status).toBe(202)
  const { jobId } = (await res.json()) as { jobId: string }
  return waitFor(
    async () => {
      const job = (await (await fetch(`${baseUrl}/api/status/${jobId}`)).json()) as DemoJobStatus
      return job.status === 'completed' ? job : null
    },
    60_000,
    what,
  )
}
