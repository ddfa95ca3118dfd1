/**
 * The console's job detail in Chromium, against a real stack (gateway, GPU host, Redis, Postgres, s3rver):
 * a LoRA job whose first attempt hangs until its timeout, with its attempts, stderr tail, live logs,
 * retry now, loss curve, parameters and options; re-run; cancel with its confirmation; a phone's width.
 */
import { randomUUID } from 'node:crypto'
import { existsSync } from 'node:fs'
import { mkdir } from 'node:fs/promises'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import type { Browser, BrowserContext, Page } from 'playwright-core'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { consoleApp } from '../../gateway/console/index.ts'
import type { JobMetricsBody, JobStatusBody } from '../../schema/api.ts'
import { HANGS_FIRST, STDERR_EVERY_MS } from '../fixtures/handlers/lora-hangs-first.ts'
import { type Stack, startStack } from '../helpers/stack.ts'

const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium'
const hasChromium = existsSync(CHROMIUM)
if (!hasChromium)
  console.warn(
    `tests/browser/console-detail.test.ts skipped: no Chromium at ${CHROMIUM} (apt-get install -y chromium, or set CHROMIUM_PATH)`,
  )

const OWNER = `detail-${randomUUID().slice(0, 8)}`
const TOKEN = `token-${randomUUID()}`
const OUT_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../test-output')
const FIXTURE = fileURLToPath(new URL('../fixtures/handlers/lora-hangs-first.ts', import.meta.url))
/** The first attempt's limit: long enough to open its logs while it runs, short enough for a test. */
const TIMEOUT_SEC = 4
const EPOCHS = 3
const poll = <T>(fn: () => Promise<T> | T, timeout = 20_000) => expect.poll(fn, { timeout, interval: 50 })
/** What the functions run in the page read of its globals (this project's TypeScript has no DOM types). */
type Box = { scrollWidth: number; clientWidth: number }
type Doc = {
  documentElement: Box
  querySelector(s: string): Box | null
  querySelectorAll(s: string): Iterable<Box & { querySelector(s: string): { className: string } | null }>
  activeElement: { id: string } | null
}

describe.skipIf(!hasChromium)('job detail in Chromium', () => {
  let stack: Stack
  let browser: Browser
  let context: BrowserContext
  let page: Page
  const pageErrors: string[] = []
  let jobId = ''

  const api = async <T>(p: string, init: RequestInit = {}): Promise<T> => {
    const res = await fetch(stack.url(p), {
      ...init,
      headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' },
    })
    return (await res.json()) as T
  }
  const statusOf = async (id: string) => (await api<JobStatusBody>(`/api/jobs/${id}`)).status
  const open = (p: Page, id: string) =>
    p.evaluate(
      (hash) => {
        ;(globalThis as unknown as { location: { hash: string } }).location.hash = hash
      },
      `#job=${encodeURIComponent(id)}`,
    )
  const shot = (name: string, p: Page = page) =>
    p.screenshot({ path: path.join(OUT_DIR, `console-detail-${name}.png`) })

  async function newPage(width: number, height: number): Promise<Page> {
    const p = await context.newPage()
    await p.setViewportSize({ width, height })
    p.setDefaultTimeout(20_000)
    p.on('pageerror', (err) => pageErrors.push(err.message))
    // The token, as a user saves it: kept in this browser's storage for every page after.
    await p.goto(stack.url('/'))
    return p
  }

  beforeAll(async () => {
    stack = await startStack({
      handlerModules: { train_lora: FIXTURE },
      // A backoff far longer than the test: a retrying job moves on only when "Retry now" is pressed.
      env: {
        SIMULATE_STEP_MS: '60',
        RETRY_BACKOFF_MS: '600000',
        API_TOKENS: `${OWNER}:${TOKEN}`,
        GATEWAY_HOST: '127.0.0.1',
      },
    })
    const { chromium } = await import('playwright-core')
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      headless: true,
      args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--no-first-run'],
    })
    context = await browser.newContext({ viewport: { width: 1280, height: 900 } })
    await context.addInitScript((token) => {
      ;(
        globalThis as unknown as { localStorage: { setItem(k: string, v: string): void } }
      ).localStorage.setItem('gpu-jobs.apiToken', token)
    }, TOKEN)
    page = await newPage(1280, 900)
    await mkdir(OUT_DIR, { recursive: true })
  })

  afterAll(async () => {
    await browser?.close()
    await stack?.close()
  })

  it('serves the SSE parser the logs tab imports, and nothing else under vendor/', async () => {
    const res = await consoleApp.request('/console/vendor/eventsource-parser.js')
    expect(res.status).toBe(200)
    expect(res.headers.get('content-type')).toBe('text/javascript; charset=utf-8')
    expect(await res.text()).toMatch(/export\s*{[^}]*createParser/)
    for (const p of [
      '/console/vendor/index.js',
      '/console/vendor/..%2F..%2Fpackage.json',
      '/console/vendor/toString',
    ])
      expect((await consoleApp.request(p)).status, p).toBe(404)
  })

  it('follows the first attempt’s log live while it runs, until its timeout ends it', async () => {
    const submitted = await api<{ jobId: string }>('/api/train', {
      method: 'POST',
      body: JSON.stringify({
        type: 'train_lora',
        params: { baseModel: HANGS_FIRST, datasetPath: 'ds', epochs: EPOCHS },
        timeoutSec: TIMEOUT_SEC,
        maxAttempts: 2,
      }),
    })
    jobId = submitted.jobId
    await open(page, jobId)
    const detail = page.locator('#detail')
    await poll(() => detail.locator('#d-status').textContent()).toBe('running')
    expect(await detail.locator('#d-attempt').textContent()).toBe('1 of 2')

    // Tabs by keyboard: Right moves from Overview to Logs and selects it.
    await page.locator('#d-tab-overview').focus()
    await page.keyboard.press('ArrowRight')
    expect(
      await page.evaluate(() => (globalThis as unknown as { document: Doc }).document.activeElement?.id),
    ).toBe('d-tab-logs')
    expect(await page.locator('#d-tab-logs').getAttribute('aria-selected')).toBe('true')
    expect(await page.locator('#d-panel-logs').isVisible()).toBe(true)
    expect(await page.locator('#d-panel-overview').isHidden()).toBe(true)

    const lines = page.locator('#d-log-lines li')
    await poll(() => lines.count()).toBeGreaterThanOrEqual(2)
    const seen = await lines.count()
    // More lines arrive while the tab is open: it follows, it does not read once.
    await poll(() => lines.count()).toBeGreaterThan(seen)
    expect(await page.locator('#d-log-status').textContent()).toContain('Following attempt 1 live')
    expect(await lines.first().getAttribute('data-stream')).toBe('stderr')
    expect(await lines.first().locator('.text').textContent()).toBe(
      'loading shard 1: waiting for the model server',
    )
    await shot('logs-live')

    // The timeout kills it: the stream ends, and the page says so; the job waits to retry.
    await poll(() => page.locator('#d-log-status').textContent(), 30_000).toMatch(
      /^Attempt 1 ended: \d+ lines\./,
    )
    await poll(() => detail.locator('#d-status').textContent()).toBe('retrying')
    const shown = await lines.count()
    const stored = await api<{ lines: { at: string }[] }>(`/api/jobs/${jobId}/logs?attempt=1`)
    expect(shown).toBe(stored.lines.length)
    // Each line with its clock time (to the millisecond, as the events), its stream, its text.
    const first = lines.first()
    expect(await first.locator('time').getAttribute('datetime')).toBe(stored.lines[0]?.at)
    expect(await first.locator('time').textContent()).toMatch(/^\d\d:\d\d:\d\d\.\d{3}$/)
    expect(await first.locator('.stream').textContent()).toBe('err')
    // Lines came for most of the attempt's run (one every STDERR_EVERY_MS).
    expect(shown).toBeGreaterThanOrEqual(Math.floor((TIMEOUT_SEC * 1000) / STDERR_EVERY_MS / 2))
  })

  it('shows the timed-out attempt in the timeline with its reason and stderr tail; retry now runs the next', async () => {
    await page.locator('#d-tab-overview').click()
    const first = page.locator('#d-attempts li[data-attempt="1"]')
    await poll(() => first.getAttribute('data-outcome')).toBe('failed')
    expect(await first.locator('.reason').getAttribute('data-reason')).toBe('timeout')
    expect(await first.locator('.reason').textContent()).toBe(
      `Timed out after ${TIMEOUT_SEC}.0 s (the job's limit)`,
    )
    expect(await first.locator('dl').textContent()).toContain(stack.config.hostId)
    const tail = first.locator('.stderr-tail pre')
    await poll(() => tail.textContent()).toContain('waiting for the model server')
    const tailLines = ((await tail.textContent()) ?? '').split('\n')
    expect(tailLines).toHaveLength(10)
    expect(await first.locator('.stderr-tail .hint').textContent()).toMatch(
      /^stderr \(last 10 of \d+ lines\):$/,
    )
    // Still one attempt of two, and another to come: the page says so and offers it now.
    expect(await page.locator('#d-attempt').textContent()).toBe('1 of 2')
    expect(await page.locator('#d-next-wrap').isVisible()).toBe(true)
    expect(await page.locator('#d-error-heading').textContent()).toBe('Error of the last attempt')
    await shot('retrying')

    const retry = page.getByRole('button', { name: 'Retry now' })
    expect(await retry.isVisible()).toBe(true)
    await retry.click()
    await poll(() => page.locator('#d-status').textContent()).toBe('running')
    // The message about the retry is gone once the job moved on.
    await poll(() => page.locator('#d-action-status').textContent()).toBe('')
    expect(await retry.isHidden()).toBe(true)

    // The loss curve draws while it runs (points from the live events).
    const chart = page.locator('#d-loss svg')
    await poll(() => chart.getAttribute('data-points').then(Number)).toBeGreaterThan(0)
    await poll(() => page.locator('#d-status').textContent(), 30_000).toBe('completed')
    await poll(() => page.locator('#d-attempts li').count()).toBe(2)
    // The stored state (which the final event makes the page read again) ends the second attempt too.
    await poll(() => page.locator('#d-attempts li[data-attempt="2"]').getAttribute('data-outcome')).toBe(
      'completed',
    )
    expect(await page.locator('#d-attempt').textContent()).toBe('2 attempts')
    // Its first attempt's timeout is in the timeline, not shown as the completed job's error.
    await poll(() => page.locator('#d-error-section').isHidden()).toBe(true)
  })

  it('draws the loss curve of the stored points, titled with its min and last values', async () => {
    // Opened afresh: the curve comes from GET /api/jobs/:id/metrics, not from events seen live.
    await page.reload()
    await poll(() => page.locator('#d-status').textContent()).toBe('completed')
    const stored = await api<JobMetricsBody>(`/api/jobs/${jobId}/metrics`)
    // The route is the job's like every other: no token is a 401, a job this token cannot see a 404.
    expect((await fetch(stack.url(`/api/jobs/${jobId}/metrics`))).status).toBe(401)
    expect(await api(`/api/jobs/no-such-job/metrics`)).toMatchObject({ error: { code: 'not_found' } })
    const points = stored.points.filter((p) => typeof p.metrics.loss === 'number')
    expect(points.length).toBe(EPOCHS * 10)
    expect(points.every((p) => p.attempt === 2)).toBe(true)
    const chart = page.locator('#d-loss svg')
    await poll(() => chart.getAttribute('data-points').then(Number)).toBe(points.length)
    expect(await chart.getAttribute('role')).toBe('img')
    const last = points.at(-1)?.metrics.loss ?? Number.NaN
    const min = Math.min(...points.map((p) => p.metrics.loss ?? Number.NaN))
    const desc = (await chart.locator('desc').textContent()) ?? ''
    expect(desc).toContain(`min ${Number(min.toPrecision(3))}`)
    expect(desc).toContain(`last ${Number(last.toPrecision(3))} at `)
    expect(await chart.locator('title').textContent()).toBe('loss over progress')
    const polyline = chart.locator('polyline[data-attempt="2"]')
    expect(((await polyline.getAttribute('points')) ?? '').split(' ')).toHaveLength(points.length)
    expect(await page.locator('#d-loss-summary').textContent()).toBe(desc)
    await page.locator('#d-loss-heading').scrollIntoViewIfNeeded()
    await shot('loss-1280')
  })

  it('shows the parameters as applied, the defaults marked, and the options', async () => {
    const row = (name: string) => page.locator(`#d-param-rows tr[data-param="${name}"]`)
    await poll(() => row('rank').getAttribute('data-from')).toBe('default')
    expect(await row('rank').locator('.value').textContent()).toBe('16')
    expect(await row('learningRate').getAttribute('data-from')).toBe('default')
    expect(await row('resolution').locator('.value').textContent()).toBe('512')
    expect(await row('epochs').getAttribute('data-from')).toBe('request')
    expect(await row('epochs').locator('.value').textContent()).toBe(String(EPOCHS))
    // The stored engine may be the request's or the gateway's DEFAULT_ENGINE_<TYPE>: the row says both.
    expect(await row('engine').locator('.from').textContent()).toBe('request or gateway default')
    expect(await row('baseModel').locator('.value').textContent()).toBe(HANGS_FIRST)
    expect(await page.locator('#d-opt-timeout').textContent()).toBe(`${TIMEOUT_SEC}.0 srequest`)
    expect(await page.locator('#d-opt-attempts').textContent()).toBe('2request')
    expect(await page.locator('#d-opt-priority').textContent()).toBe('none (in arrival order)default')
    const body = await api<JobStatusBody>(`/api/jobs/${jobId}`)
    expect(body).toMatchObject({ timeoutSec: TIMEOUT_SEC, priority: null, maxAttempts: 2 })
    await page.locator('#d-params-heading').scrollIntoViewIfNeeded()
    await shot('1280')
    await page.locator('#d-attempts-heading').scrollIntoViewIfNeeded()
    await shot('attempts-1280')
  })

  it('reads an earlier attempt’s log from the picker', async () => {
    await page.locator('#d-tab-logs').click()
    const picker = page.locator('#d-log-attempt')
    expect(await picker.locator('option').allTextContents()).toEqual(['Attempt 1', 'Attempt 2'])
    expect(await picker.inputValue()).toBe('2')
    await poll(() => page.locator('#d-log-status').textContent()).toMatch(/^Attempt 2 ended/)
    await picker.selectOption('1')
    await poll(() => page.locator('#d-log-lines li[data-stream="stderr"]').count()).toBeGreaterThan(5)
    expect(await page.locator('#d-log-status').textContent()).toMatch(/^Attempt 1 ended: \d+ lines\.$/)
    await page.locator('#d-tab-events').click()
    expect(await page.locator('#d-event-rows tr').count()).toBeGreaterThan(EPOCHS * 10)
    await page.locator('#d-tab-overview').click()
  })

  it('opens a job from the short id the list shows (#job=<8 characters>), then goes by its whole id', async () => {
    const short = jobId.slice(0, 8)
    expect(short).not.toBe(jobId)
    const p = await context.newPage()
    p.on('pageerror', (err) => pageErrors.push(err.message))
    await p.goto(stack.url(`/#job=${short}`))
    await poll(() => p.locator('#d-id').textContent()).toBe(jobId)
    expect(
      await p.evaluate(() => (globalThis as unknown as { location: { hash: string } }).location.hash),
    ).toBe(`#job=${jobId}`)
    await poll(() => p.locator('#d-status').textContent()).toBe(await statusOf(jobId))
    await p.locator('#d-tab-logs').click()
    await poll(() => p.locator('#d-log-lines li').count()).toBeGreaterThan(0)
    await p.close()
  })

  it('re-runs the job as a new one and opens it; cancel asks first, and its message goes with the job', async () => {
    await page.getByRole('button', { name: 'Re-run' }).click()
    await poll(() => page.locator('#d-id').textContent()).not.toBe(jobId)
    const newId = (await page.locator('#d-id').textContent()) ?? ''
    expect(page.url()).toContain(`#job=${encodeURIComponent(newId)}`)
    const copy = await api<JobStatusBody>(`/api/jobs/${newId}`)
    expect(copy).toMatchObject({ type: 'train_lora', timeoutSec: TIMEOUT_SEC, maxAttempts: 2 })
    expect(copy.params).toMatchObject({ baseModel: HANGS_FIRST, epochs: EPOCHS })
    await poll(() => page.locator('#d-status').textContent()).toBe('running')
    await poll(() => page.locator('#d-artifacts-empty').textContent()).toBe('None yet.')

    // Cancel asks first: keeping the job changes nothing.
    const confirm = page.locator('#d-confirm')
    await page.getByRole('button', { name: 'Cancel job' }).click()
    await poll(() => confirm.isVisible()).toBe(true)
    await shot('confirm')
    await page.getByRole('button', { name: 'Keep the job' }).click()
    await poll(() => confirm.isHidden()).toBe(true)
    expect(['running', 'retrying']).toContain(await statusOf(newId))

    await page.getByRole('button', { name: 'Cancel job' }).click()
    await page.getByRole('button', { name: 'Yes, cancel it' }).click()
    await poll(() => page.locator('#d-status').textContent()).toBe('cancelled')
    expect(await statusOf(newId)).toBe('cancelled')
    // Nothing left saying the cancel is under way, no cancel button, and no artifacts "yet" to come.
    await poll(() => page.locator('#d-action-status').textContent()).not.toContain('Cancel requested')
    expect(await page.getByRole('button', { name: 'Cancel job' }).isHidden()).toBe(true)
    await poll(() => page.locator('#d-artifacts-empty').textContent()).toBe('No artifacts.')
    expect(await page.locator('#d-attempt').textContent()).toBe('1')
  })

  it('cancels a running job: "Cancel requested" is replaced once it is cancelled', async () => {
    const { jobId: voiceId } = await api<{ jobId: string }>('/api/train', {
      method: 'POST',
      body: JSON.stringify({
        type: 'train_voice',
        params: { speakerName: 'ann', datasetPath: 'ds', epochs: 500 },
      }),
    })
    await open(page, voiceId)
    await poll(() => page.locator('#d-status').textContent()).toBe('running')
    await page.getByRole('button', { name: 'Cancel job' }).click()
    await page.getByRole('button', { name: 'Yes, cancel it' }).click()
    await poll(() => page.locator('#d-status').textContent()).toBe('cancelled')
    await poll(() => page.locator('#d-action-status').textContent()).toBe('')
    await poll(() => page.locator('#d-artifacts-empty').textContent()).toBe('No artifacts.')
    expect(await page.locator('#d-error-reason').textContent()).toBe('cancelled')
    // Its attempt says "cancelled" once: the badge, not a reason that repeats it.
    const attempt = page.locator('#d-attempts li[data-attempt="1"]')
    await poll(() => attempt.locator('.badge').textContent()).toBe('cancelled')
    expect(await attempt.locator('.reason').count()).toBe(0)
  })

  it('fits a 390 px wide phone: the detail is usable and nothing scrolls sideways', async () => {
    const phone = await newPage(390, 844)
    await open(phone, jobId)
    await poll(() => phone.locator('#d-status').textContent()).toBe('completed')
    await poll(() => phone.locator('#d-attempts li').count()).toBe(2)
    await poll(() => phone.locator('#d-loss svg').count()).toBe(1)
    const overflow = () =>
      phone.evaluate(() => {
        const doc = (globalThis as unknown as { document: Doc }).document
        const body = doc.querySelector('#detail-body')
        return {
          page: doc.documentElement.scrollWidth - doc.documentElement.clientWidth,
          detail: body ? body.scrollWidth - body.clientWidth : -1,
        }
      })
    expect(await overflow()).toEqual({ page: 0, detail: 0 })
    // Nor any table inside it (a wrapper that scrolls sideways hid the Download buttons and the messages).
    const wideTables = () =>
      phone.evaluate(() => {
        const doc = (globalThis as unknown as { document: Doc }).document
        return [...doc.querySelectorAll('#detail .table-wrap')]
          .filter((el) => el.clientWidth > 0 && el.scrollWidth > el.clientWidth + 1)
          .map((el) => `${el.querySelector('table')?.className}: ${el.scrollWidth} > ${el.clientWidth}`)
      })
    expect(await wideTables()).toEqual([])
    expect(
      await phone
        .getByRole('link', { name: /^Download / })
        .first()
        .isVisible(),
    ).toBe(true)
    await phone.locator('#d-tab-events').click()
    await poll(() => phone.locator('#d-event-rows tr').count()).toBeGreaterThan(5)
    expect(await wideTables()).toEqual([])
    await shot('events-390', phone)
    await phone.locator('#d-tab-overview').click()
    expect(await phone.getByRole('button', { name: 'Re-run' }).isVisible()).toBe(true)
    await shot('390', phone)
    await phone.locator('#d-attempts li[data-attempt="2"]').scrollIntoViewIfNeeded()
    await shot('attempts-390', phone)
    await phone.locator('#d-params-heading').scrollIntoViewIfNeeded()
    await shot('params-390', phone)
    await phone.locator('#d-tab-logs').click()
    await phone.locator('#d-log-attempt').selectOption('1')
    await poll(() => phone.locator('#d-log-lines li').count()).toBeGreaterThan(5)
    expect(await overflow()).toEqual({ page: 0, detail: 0 })
    await shot('logs-390', phone)
    await phone.close()
  })

  it('raised no script errors', () => {
    expect(pageErrors).toEqual([])
  })
})
