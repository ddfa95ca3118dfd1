/**
 * GPU check (run on a machine with an NVIDIA GPU, see tests/gpu/README.md): a job whose grandchild holds
 * GPU memory (PyTorch) is ended by its hard timeout, then another by cancel; after each, nvidia-smi must
 * show the GPU's memory back at its baseline within 5 s, and no process of the job may be left.
 * Uses the real runner (fresh process, process group, SIGTERM, grace, SIGKILL) with no Redis or Postgres.
 */
import { mkdtemp } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { DirectoryArtifactStore } from '../../functions/sdk/local-artifacts.ts'
import { readGpus, slotsFor } from '../../gpu-host/gpus.ts'
import { groupMembers } from '../../gpu-host/process-group.ts'
import { JobProcess } from '../../gpu-host/runner.ts'

const HANDLER = process.env.GPU_CHECK_HANDLER ?? path.resolve('tests/fixtures/handlers/gpu-alloc.ts')
const MIB = Number(process.env.GPU_CHECK_MIB ?? 8192)

async function usedMb(uuid: string): Promise<number> {
  const g = (await readGpus())?.find((x) => x.uuid === uuid)
  if (!g) throw new Error(`GPU ${uuid} not found by nvidia-smi`)
  return g.memoryUsedMb
}

async function runCase(how: 'timeout' | 'cancel'): Promise<boolean> {
  const gpus = await readGpus()
  const slot = slotsFor(gpus, 1)[0]
  if (!gpus?.length || !slot?.gpu.uuid) throw new Error('no GPU: nvidia-smi found none')
  const uuid = slot.gpu.uuid
  const baseline = await usedMb(uuid)
  const out = await mkdtemp(path.join(tmpdir(), 'gpu-check-'))
  let peak = baseline
  const proc = new JobProcess({
    job: {
      jobId: `gpu-check-${how}`,
      type: 'train_lora',
      params: { mode: 'gpu-alloc', mib: MIB },
      attempt: 1,
    },
    gpu: slot.gpu,
    cudaVisibleDevices: slot.cudaVisibleDevices,
    paths: { scratch: path.join(out, 'scratch'), models: out, data: out },
    engines: { simulateStepMs: 0 },
    artifacts: new DirectoryArtifactStore(out, 'checks'),
    timeoutMs: how === 'timeout' ? 20_000 : 600_000,
    killGraceMs: 2000,
    handlerModule: HANDLER,
    onProgress: (_p, m) => console.log(`  progress: ${m}`),
  })
  const t0 = Date.now()
  for (;;) {
    peak = Math.max(peak, await usedMb(uuid))
    if (peak - baseline >= MIB * 0.9 || Date.now() - t0 > 60_000) break
    await sleep(250)
  }
  console.log(`${how}: baseline ${baseline} MiB, peak ${peak} MiB (+${peak - baseline}) with pid ${proc.pid}`)
  if (how === 'cancel') proc.abort('cancelled')
  const outcome = await proc.done
  const ended = Date.now()
  let after = await usedMb(uuid)
  while (after > baseline + 64 && Date.now() - ended < 5000) {
    await sleep(100)
    after = await usedMb(uuid)
  }
  const backMs = Date.now() - ended
  const left = await groupMembers(proc.pid)
  const ok =
    !outcome.ok &&
    outcome.error.reason === (how === 'timeout' ? 'timeout' : 'cancelled') &&
    after <= baseline + 64 &&
    left?.length === 0 &&
    peak - baseline >= MIB * 0.9
  console.log(
    `${how}: ended with reason ${outcome.ok ? 'none' : outcome.error.reason}; memory ${after} MiB ${backMs} ms after the group was confirmed gone; processes left: ${left?.length}; ${ok ? 'PASS' : 'FAIL'}`,
  )
  return ok
}

const results = [await runCase('timeout'), await runCase('cancel')]
console.log(results.every(Boolean) ? 'GPU release check: PASS' : 'GPU release check: FAIL')
process.exit(results.every(Boolean) ? 0 : 1)
