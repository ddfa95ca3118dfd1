import { createHash, randomUUID } from 'node:crypto'
import { existsSync } from 'node:fs'
import { mkdir, readFile } from 'node:fs/promises'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { fileURLToPath } from 'node:url'
import type { Browser, Page } from 'playwright-core'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { type Gateway, startGateway } from '../../gateway/server.ts'
import type { JobStatusBody } from '../../schema/api.ts'
import { JOB_CATALOG, JOB_TYPES } from '../../schema/params/index.ts'
import { lastEvent } from '../../schema/progress-log.ts'
import { quietLogger, type Stack, startStack } from '../helpers/stack.ts'

const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium'
const hasChromium = existsSync(CHROMIUM)
if (!hasChromium)
  console.warn(
    `tests/browser/console.test.ts skipped: no Chromium at ${CHROMIUM} (apt-get install -y chromium, or set CHROMIUM_PATH)`,
  )

// A fresh owner per run: the test database keeps jobs of earlier runs, and a token sees only its own.
const OWNER = `console-${randomUUID().slice(0, 8)}`
const TOKEN = `token-${randomUUID()}`
/** expect.poll with a timeout that fits a job run (vitest's default is 1 s). */
const poll = <T>(fn: () => Promise<T> | T) => expect.poll(fn, { timeout: 15_000, interval: 50 })
/** The part of a <progress> element the checks read (this project's TypeScript has no DOM types). */
type ProgressBar = { value: number }
/** What the functions run in the page use of its globals. */
type BrowserGlobals = { document: { querySelector(selector: string): ProgressBar | null } }
const OUT_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../test-output')

describe.skipIf(!hasChromium)('web console in Chromium', () => {
  let stack: Stack
  let browser: Browser
  let page: Page
  let restarted: Gateway | undefined
  const pageErrors: string[] = []
  /** WebSocket frames the page sent and received, per socket, in order. */
  const sockets: { sent: string[]; received: string[] }[] = []

  const api = async <T>(p: string, init: RequestInit = {}): Promise<T> => {
    const res = await fetch(stack.url(p), {
      ...init,
      headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' },
    })
    return (await res.json()) as T
  }
  /** The seq of a job's last event, from its replay log (the record of every event it had). */
  const lastSeq = async (jobId: string) => (await lastEvent(stack.redis, jobId))?.seq ?? 0
  const row = (jobId: string) => page.locator(`#job-rows tr[data-job-id="${jobId}"]`)
  const detailSeqs = () =>
    page
      .locator('#d-event-rows tr')
      .evaluateAll((trs) => trs.map((tr) => Number(tr.getAttribute('data-seq'))))

  /** Fills the form of a type (fields by their id after the type's prefix), submits it; returns the job's id. */
  async function submitJob(type: string, prefix: string, fields: Record<string, string>): Promise<string> {
    await page.selectOption('#f-type', type)
    for (const [name, value] of Object.entries(fields)) await page.fill(`#${prefix}-${name}`, value)
    await page.getByRole('button', { name: 'Submit job' }).click()
    const link = page.locator('#submit-status a')
    await link.waitFor()
    const href = (await link.getAttribute('href')) ?? ''
    return decodeURIComponent(href.replace('#job=', ''))
  }
  const submitLora = (fields: Record<string, string>) => submitJob('train_lora', 'lora', fields)

  async function closeDetail() {
    await page.keyboard.press('Escape')
    await poll(() => page.locator('#detail').evaluate((d) => (d as unknown as { open: boolean }).open)).toBe(
      false,
    )
  }

  beforeAll(async () => {
    stack = await startStack({
      env: { SIMULATE_STEP_MS: '20', API_TOKENS: `${OWNER}:${TOKEN}`, GATEWAY_HOST: '127.0.0.1' },
    })
    const { chromium } = await import('playwright-core')
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      headless: true,
      args: [
        '--no-sandbox',
        '--disable-gpu',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
        '--no-first-run',
      ],
    })
    const context = await browser.newContext({
      acceptDownloads: true,
      viewport: { width: 1440, height: 900 },
    })
    page = await context.newPage()
    page.setDefaultTimeout(15_000)
    page.on('pageerror', (err) => pageErrors.push(err.message))
    page.on('websocket', (ws) => {
      const log = { sent: [] as string[], received: [] as string[] }
      sockets.push(log)
      ws.on('framesent', (f) => log.sent.push(String(f.payload)))
      ws.on('framereceived', (f) => log.received.push(String(f.payload)))
    })
    await mkdir(OUT_DIR, { recursive: true })
  })

  afterAll(async () => {
    await browser?.close()
    await restarted?.close()
    await stack?.close()
  })

  it('asks for an API token, then shows the jobs it can see', async () => {
    await page.goto(stack.url('/'))
    await poll(() => page.locator('#banner').textContent()).toContain('API token')
    await page.getByLabel('API token').fill(TOKEN)
    await page.getByRole('button', { name: 'Save', exact: true }).click()
    await poll(() => page.locator('#banner').isHidden()).toBe(true)
    await poll(() => page.locator('#conn').getAttribute('data-state')).toBe('open')
    await poll(() => page.locator('#jobs-note').textContent()).toContain('No jobs yet')
    expect(
      await page.evaluate(() =>
        (
          globalThis as unknown as { localStorage: { getItem(k: string): string | null } }
        ).localStorage.getItem('gpu-jobs.apiToken'),
      ),
    ).toBe(TOKEN)
  })

  it("builds each type's form from the job catalog: a control per param, the schema's defaults and ranges", async () => {
    await poll(() => page.locator('#f-type option').count()).toBe(JOB_TYPES.length)
    for (const type of JOB_TYPES) {
      const names = await page
        .locator(`fieldset[data-type="${type}"] [name]`)
        .evaluateAll((els) => els.map((el) => el.getAttribute('name') ?? ''))
      // Nested params (render_video's inputs.prompt) are fields of their own under one top-level key.
      const topLevel = [...new Set(names.map((n) => n.split('.')[1]))]
      expect(topLevel, type).toEqual(Object.keys(JOB_CATALOG[type].params.entries))
    }
    expect(await page.locator('#f-type option').first().textContent()).toBe('train_lora: LoRA training')
    expect(await page.locator('#lora-epochs').inputValue()).toBe('10')
    expect(await page.locator('#lora-epochs').getAttribute('max')).toBe('1000')
    expect(await page.locator('#lora-learningRate').getAttribute('step')).toBe('any')
    expect(await page.locator('#video-width').getAttribute('step')).toBe('8')
    expect(await page.locator('#voice-language').inputValue()).toBe('en')
    expect(await page.locator('#lora-engine option').allTextContents()).toEqual(['simulate', 'kohya'])
  })

  it('submits a train_lora job and follows it live to completion, then shows its details', async () => {
    const jobId = await submitLora({ datasetPath: 'ds', epochs: '5', rank: '4' })
    // The progress bar moves while it runs, and ends at 100%, completed.
    await page.waitForFunction((selector) => {
      const v = (globalThis as unknown as BrowserGlobals).document.querySelector(selector)?.value ?? 0
      return v > 0 && v < 100
    }, `tr[data-job-id="${jobId}"] progress`)
    await poll(() => row(jobId).getAttribute('data-status')).toBe('completed')
    expect(await row(jobId).locator('.pct').textContent()).toBe('100%')
    expect(
      await row(jobId)
        .locator('progress')
        .evaluate((b) => (b as unknown as ProgressBar).value),
    ).toBe(100)

    const status = await api<JobStatusBody>(`/api/status/${jobId}`)
    expect(status).toMatchObject({ status: 'completed', progress: 100 })

    await row(jobId).getByRole('link').click()
    const detail = page.getByRole('dialog')
    await poll(() => detail.locator('#d-status').textContent()).toBe('completed')
    // Completed: how many attempts it took, not "1 of 3" (no other attempt will come).
    expect(await detail.locator('#d-attempt').textContent()).toBe('1 attempt')
    expect(await detail.locator('#d-params').textContent()).toContain('"datasetPath": "ds"')
    await poll(() => detail.locator('#d-result').textContent()).toContain('"')
    // The whole history, replayed over the socket: seq 1 (queued) to the final one, each once.
    const finalSeq = await lastSeq(jobId)
    await poll(() => detailSeqs().then((s) => s.length)).toBe(finalSeq)
    expect(await detailSeqs()).toEqual(Array.from({ length: finalSeq }, (_, i) => i + 1))
    expect(await page.locator('#d-event-rows tr').first().locator('td').nth(2).textContent()).toBe('queued')
    expect(await page.locator('#d-event-rows tr').last().locator('td').nth(2).textContent()).toBe('completed')

    // Download with the token (a blob), checked against the manifest's sha256.
    const artifact = status.artifacts.find((a) => a.path === 'lora.safetensors')
    expect(artifact).toBeDefined()
    const downloadLink = detail.getByRole('link', { name: 'Download lora.safetensors' })
    const [download] = await Promise.all([page.waitForEvent('download'), downloadLink.click()])
    expect(download.suggestedFilename()).toBe('lora.safetensors')
    const bytes = await readFile(await download.path())
    expect(createHash('sha256').update(bytes).digest('hex')).toBe(artifact?.sha256)
    expect(bytes.length).toBe(artifact?.size)
    await poll(() => page.locator('#d-download-status').textContent()).toContain('SHA-256 verified')

    await page.screenshot({ path: path.join(OUT_DIR, 'console-detail.png') })
    await closeDetail()
  })

  it('shows a validation error next to the field it is about', async () => {
    await page.selectOption('#f-type', 'train_lora')
    await page.fill('#lora-datasetPath', 'ds')
    await page.fill('#lora-epochs', '0')
    await page.getByRole('button', { name: 'Submit job' }).click()
    const error = page.locator('#lora-epochs-error')
    await error.waitFor()
    expect(await error.textContent()).toMatch(/1/)
    expect(await page.locator('#lora-epochs').getAttribute('aria-invalid')).toBe('true')
    expect(await page.locator('#lora-epochs').getAttribute('aria-describedby')).toContain('lora-epochs-error')
    expect(await page.locator('#form-error').textContent()).toContain('correct the highlighted')
    await page.screenshot({ path: path.join(OUT_DIR, 'console-field-error.png') })
    // A dataset outside DATA_DIR is reported on its field too; editing a field clears its error.
    await page.fill('#lora-epochs', '2')
    expect(await error.count()).toBe(0)
    await page.fill('#lora-datasetPath', '../../etc')
    await page.getByRole('button', { name: 'Submit job' }).click()
    await page.locator('#lora-datasetPath-error').waitFor()
    expect(await page.locator('#lora-datasetPath').getAttribute('aria-invalid')).toBe('true')
    await page.fill('#lora-datasetPath', 'ds')
  })

  it('cancels a long job', async () => {
    const jobId = await submitLora({ datasetPath: 'ds', epochs: '1000' })
    await poll(() => row(jobId).getAttribute('data-status')).toBe('running')
    await poll(() =>
      row(jobId)
        .locator('progress')
        .evaluate((b) => (b as unknown as ProgressBar).value > 0.5),
    ).toBe(true)
    await page.screenshot({ path: path.join(OUT_DIR, 'console.png') })
    await row(jobId).click()
    const detail = page.getByRole('dialog')
    await poll(() => detail.locator('#d-status').textContent()).toBe('running')
    await detail.getByRole('button', { name: 'Cancel job' }).click()
    await page.getByRole('button', { name: 'Yes, cancel it' }).click()
    await poll(() => detail.locator('#d-status').textContent()).toBe('cancelled')
    await poll(() => detail.locator('#d-error-reason').textContent()).toBe('cancelled')
    expect(await detail.getByRole('button', { name: 'Cancel job' }).isHidden()).toBe(true)
    expect((await api<JobStatusBody>(`/api/status/${jobId}`)).status).toBe('cancelled')
    await poll(() => row(jobId).getAttribute('data-status')).toBe('cancelled')
    // Cancelling a finished job is a 409, which the page explains.
    const res = await fetch(stack.url(`/api/jobs/${jobId}/cancel`), {
      method: 'POST',
      headers: { authorization: `Bearer ${TOKEN}` },
    })
    expect(res.status).toBe(409)
    await closeDetail()
  })

  it('survives a gateway restart: reconnects, resumes after the last seq, loses and repeats nothing', async () => {
    const jobId = await submitLora({ datasetPath: 'ds', epochs: '25' })
    await row(jobId).getByRole('link').click()
    await page.waitForFunction(
      () =>
        ((globalThis as unknown as BrowserGlobals).document.querySelector('#d-progress')?.value ?? 0) >= 10,
    )
    const socketsBefore = sockets.length

    const port = stack.gateway.port
    const started = Date.now()
    await stack.gateway.close()
    expect(Date.now() - started).toBeLessThan(5000)
    await poll(() => page.locator('#conn').getAttribute('data-state')).not.toBe('open')
    expect(await page.locator('#conn-text').textContent()).toMatch(/reconnect/i)
    await sleep(1000)
    restarted = await startGateway({
      config: { ...stack.config, gatewayPort: port },
      database: stack.database,
      s3: stack.s3.client,
      logger: quietLogger(),
    })
    expect(restarted.url).toBe(stack.gateway.url)

    await poll(() => page.locator('#conn').getAttribute('data-state')).toBe('open')
    await poll(() => page.locator('#d-status').textContent()).toBe('completed')
    const finalSeq = await lastSeq(jobId)
    await poll(() => detailSeqs().then((s) => s.length)).toBe(finalSeq)
    expect(await detailSeqs()).toEqual(Array.from({ length: finalSeq }, (_, i) => i + 1))
    await poll(() => row(jobId).getAttribute('data-status')).toBe('completed')

    // On the new socket the page asked to resume after the last seq it had, and got each later event once.
    const resumed = sockets.slice(socketsBefore).find((s) => s.sent.length > 0)
    const subscribe = resumed?.sent.map((m) => JSON.parse(m)).find((m) => m.jobId === jobId)
    expect(subscribe).toMatchObject({ op: 'subscribe', jobId })
    expect(subscribe.after).toBeGreaterThan(1)
    const oldSocket = sockets[socketsBefore - 1]
    const seenBefore = (oldSocket?.received ?? [])
      .map((m) => JSON.parse(m))
      .filter((m) => m.jobId === jobId && typeof m.seq === 'number')
      .map((m) => m.seq as number)
    expect(subscribe.after).toBe(Math.max(...seenBefore))
    const seqsAfter = (resumed?.received ?? [])
      .map((m) => JSON.parse(m))
      .filter((m) => m.jobId === jobId && typeof m.seq === 'number')
      .map((m) => m.seq as number)
    expect(seqsAfter[0]).toBe(subscribe.after + 1)
    expect(new Set(seqsAfter).size).toBe(seqsAfter.length)
    await closeDetail()
  })

  it('submits the other types from their forms, and filters the list by type', async () => {
    const voiceId = await submitJob('train_voice', 'voice', {
      speakerName: 'ann',
      datasetPath: 'ds',
      epochs: '1',
    })
    expect(await page.locator('fieldset[data-type="train_lora"]').isHidden()).toBe(true)
    await page.screenshot({ path: path.join(OUT_DIR, 'console-voice-form.png') })
    await poll(() => row(voiceId).getAttribute('data-status')).toBe('completed')
    expect(await row(voiceId).locator('td').nth(1).textContent()).toBe('train_voice')
    expect((await api<JobStatusBody>(`/api/status/${voiceId}`)).params).toMatchObject({
      speakerName: 'ann',
      language: 'en',
      epochs: 1,
    })

    const videoId = await submitJob('render_video', 'video', { prompt: 'a red fox', seed: '7', frames: '3' })
    await page.screenshot({ path: path.join(OUT_DIR, 'console-video-form.png') })
    expect((await api<JobStatusBody>(`/api/status/${videoId}`)).params).toMatchObject({
      workflow: 'default',
      inputs: { prompt: 'a red fox', seed: 7 },
      frames: 3,
    })

    await page.selectOption('#filter-type', 'train_voice')
    await poll(() => page.locator('#job-rows tr').count()).toBe(1)
    expect(await row(voiceId).count()).toBe(1)
    await page.selectOption('#filter-type', '')
    await poll(() => row(videoId).count()).toBe(1)
    await page.selectOption('#f-type', 'train_lora')
  })

  it('previews artifacts: the LoRA header summary, the voice in a player, the render as an animated image', async () => {
    const submit = async (type: string, params: Record<string, unknown>) =>
      (await api<{ jobId: string }>('/api/train', { method: 'POST', body: JSON.stringify({ type, params }) }))
        .jobId
    const lora = await submit('train_lora', { baseModel: 'sd15', datasetPath: 'ds', epochs: 1, rank: 4 })
    const voice = await submit('train_voice', { speakerName: 'ann', datasetPath: 'ds', epochs: 1 })
    const video = await submit('render_video', {
      inputs: { prompt: 'a fox' },
      width: 64,
      height: 48,
      frames: 4,
      fps: 4,
    })
    for (const id of [lora, voice, video])
      await poll(() => api<JobStatusBody>(`/api/status/${id}`).then((j) => j.status)).toBe('completed')
    const open = async (id: string) => {
      await page.evaluate(
        (hash) => {
          ;(globalThis as unknown as { location: { hash: string } }).location.hash = hash
        },
        `#job=${encodeURIComponent(id)}`,
      )
      await poll(() => page.locator('#d-status').textContent()).toBe('completed')
    }

    await open(lora)
    const summary = page.locator('#d-previews .preview.safetensors')
    // The header's tensor count and the LoRA's rank (ss_network_dim), read with two Range requests.
    await poll(() => summary.textContent()).toMatch(/Tensors\d+.*network_dim4/)
    await closeDetail()

    await open(voice)
    // The player has read the WAV's header: its length is known (a WAV of the voice, in seconds).
    await poll(() =>
      page.evaluate(() => {
        const audio = (globalThis as unknown as BrowserGlobals).document.querySelector(
          '#d-previews audio',
        ) as unknown as {
          duration: number
          readyState: number
          error: { code: number } | null
          src: string
        } | null
        return audio
          ? {
              ready: audio.readyState >= 1 && audio.duration > 0,
              error: audio.error?.code ?? null,
              src: audio.src.slice(0, 5),
            }
          : null
      }),
    ).toEqual({ ready: true, error: null, src: 'blob:' })
    await closeDetail()

    await open(video)
    const size = await page.waitForFunction(() => {
      const img = (globalThis as unknown as BrowserGlobals).document.querySelector(
        '#d-previews img',
      ) as unknown as { complete: boolean; naturalWidth: number; naturalHeight: number } | null
      return img?.complete && img.naturalWidth > 0 ? [img.naturalWidth, img.naturalHeight] : null
    })
    expect(await size.jsonValue()).toEqual([64, 48])
    await page.screenshot({ path: path.join(OUT_DIR, 'console-previews.png') })
    await closeDetail()
  })

  it('raised no script errors', () => {
    expect(pageErrors).toEqual([])
  })
})
