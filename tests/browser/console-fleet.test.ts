/**
 * The console's fleet views in Chromium, against a whole stack: the hosts view (a real host with its
 * slots and running jobs linked to their details, a GPU's memory bar, a host that stops beating shown
 * gone, the empty state and a 503 banner), the queue strip on every view and its counts as jobs are
 * submitted, the list's search (id prefix, message text, kept in the location) and paging, one time
 * format, and a 390 px wide phone with nothing cut off. Screenshots in test-output/console-fleet-*.png.
 */
import { existsSync } from 'node:fs'
import { mkdir } from 'node:fs/promises'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import type { Browser, Page } from 'playwright-core'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { startGateway } from '../../gateway/server.ts'
import { Heartbeat, type HeartbeatSource } from '../../gpu-host/heartbeat.ts'
import type { JobSummary } from '../../schema/api.ts'
import { createS3Client } from '../../schema/clients.ts'
import { openDatabase } from '../../schema/db/connect.ts'
import type { QueueBody } from '../../schema/queue.ts'
import {
  addFixtureJob,
  FIXTURE_DISPATCH,
  isolatedDatabase,
  quietLogger,
  type Stack,
  startStack,
  TEST_REDIS_URL,
} from '../helpers/stack.ts'
import { startTcpProxy } from '../helpers/tcp-proxy.ts'

const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium'
const hasChromium = existsSync(CHROMIUM)
if (!hasChromium)
  console.warn(
    `tests/browser/console-fleet.test.ts skipped: no Chromium at ${CHROMIUM} (apt-get install -y chromium, or set CHROMIUM_PATH)`,
  )

const OUT_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../test-output')
/** expect.poll with a timeout that fits the hosts view's polling (vitest's default is 1 s). */
const poll = <T>(fn: () => Promise<T> | T) => expect.poll(fn, { timeout: 15_000, interval: 100 })
/** The host's beat here: fast, so the view sees a job start within its own poll. */
const BEAT_MS = 250
/** A job that runs until cancelled (20 minutes of 100 ms steps, each with a message "step n/12000"). */
const LONG = { steps: 12_000, stepMs: 100 }
/** What the functions run in the page use of its globals (this project's TypeScript has no DOM types). */
type PageGlobals = { document: { scrollingElement: { scrollWidth: number } }; location: { search: string } }
const pageWidth = (page: Page) =>
  page.evaluate(() => (globalThis as unknown as PageGlobals).document.scrollingElement.scrollWidth)

/**
 * A host with one GPU, beating from this test: this machine may have no nvidia-smi, and the view must
 * show a GPU's memory (used, reserved for a job, total) all the same. The real Heartbeat writes it; the
 * real gateway reads and checks it.
 */
const gpuHost = (hostId: string, jobId: string): HeartbeatSource => ({
  hostId,
  version: '0.1.0',
  startedAt: Date.now() - 3 * 3_600_000,
  closing: () => false,
  slots: () => [
    {
      id: 0,
      gpu: { index: 0, uuid: 'GPU-test-0', name: 'NVIDIA H200', vramTotalMb: 143_771 },
      cudaVisibleDevices: 'GPU-test-0',
      jobs: 1,
      busy: true,
    },
  ],
  // The admission ledger's view of the slot: the one job's reservation.
  usage: () => ({
    totalMb: 143_771,
    otherMb: 0,
    reservedMb: 40_000,
    freeMb: 143_771 - 40_000,
    jobs: 1,
    exclusive: false,
  }),
  gpus: () => [
    {
      index: 0,
      uuid: 'GPU-test-0',
      name: 'NVIDIA H200',
      memoryUsedMb: 20_480,
      memoryTotalMb: 143_771,
      utilizationPct: 87,
    },
  ],
  engines: () => ({
    train_lora: ['simulate', 'kohya'],
    train_voice: ['simulate'],
    render_video: ['simulate'],
  }),
  jobs: () => [
    {
      jobId,
      type: 'train_lora',
      cancelRequested: false,
      proc: undefined,
      reporter: undefined,
      attempt: 1,
      startedAt: Date.now() - 60_000,
      slot: 0,
      vramMb: 40_000,
    },
  ],
})

describe.skipIf(!hasChromium)('console fleet views in Chromium', () => {
  let stack: Stack
  let iso: Awaited<ReturnType<typeof isolatedDatabase>>
  let browser: Browser
  let page: Page
  const pageErrors: string[] = []
  /** The long jobs that fill the host's slots (cancelled at the end). */
  const running: string[] = []
  /** The render jobs submitted from the form, waiting behind them. */
  const waiting: string[] = []

  const api = async <T>(p: string, init: RequestInit = {}): Promise<T> => {
    const res = await fetch(stack.url(p), { ...init, headers: { 'content-type': 'application/json' } })
    return (await res.json()) as T
  }
  const listed = async (q = '') =>
    (await api<{ jobs: JobSummary[] }>(`/api/jobs?limit=500${q ? `&q=${encodeURIComponent(q)}` : ''}`)).jobs
  const rowIds = () =>
    page.locator('#job-rows tr').evaluateAll((trs) => trs.map((tr) => tr.getAttribute('data-job-id') ?? ''))
  const card = (hostId: string) => page.locator(`#host-cards [data-host-id="${hostId}"]`)
  /** A screenshot of the page (whole, or `screen`: only what the screen shows). */
  const shot = (name: string, { screen = false } = {}) =>
    page.screenshot({ path: path.join(OUT_DIR, `console-fleet-${name}.png`), fullPage: !screen })
  const queueCount = async (name: string) => Number(await page.locator(`#q-${name}`).textContent())

  beforeAll(async () => {
    // A database of its own: the list, its paging and the queue's row counts are this test's alone.
    iso = await isolatedDatabase()
    stack = await startStack({
      databaseUrl: iso.url,
      handlerModules: { train_lora: FIXTURE_DISPATCH },
      heartbeatMs: BEAT_MS,
      env: { GPU_SLOTS: '2', SIMULATE_STEP_MS: '20' },
    })
    const { chromium } = await import('playwright-core')
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      headless: true,
      args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--no-first-run'],
    })
    page = await (await browser.newContext({ viewport: { width: 1280, height: 900 } })).newPage()
    page.setDefaultTimeout(15_000)
    page.on('pageerror', (err) => pageErrors.push(err.message))
    await mkdir(OUT_DIR, { recursive: true })
  })

  afterAll(async () => {
    for (const id of [...running, ...waiting])
      await fetch(stack.url(`/api/jobs/${id}/cancel`), { method: 'POST' }).catch(() => {})
    await browser?.close()
    await stack?.close()
    await iso?.drop()
  })

  it('shows the running host in the hosts view: its slots, engines and running jobs linked to their details', async () => {
    await page.goto(stack.url('/'))
    await poll(() => page.locator('#conn').getAttribute('data-state')).toBe('open')
    // Where nvidia-smi reports GPUs the host has one slot per GPU; here two virtual ones.
    const slots = (
      await api<{ hosts: { hostId: string; slots: { total: number } }[] }>('/api/hosts')
    ).hosts.find((h) => h.hostId === stack.config.hostId)?.slots.total
    expect(slots).toBeGreaterThan(0)
    for (let i = 0; i < (slots ?? 0); i++)
      running.push(await addFixtureJob(stack, 'ok', { maxAttempts: 1 }, LONG))

    await page.getByRole('link', { name: 'Hosts', exact: true }).click()
    expect(new URL(page.url()).hash).toBe('#hosts')
    await poll(() => page.locator('#main').isHidden()).toBe(true)
    expect(await page.locator('#nav-hosts').getAttribute('aria-current')).toBe('page')
    const host = card(stack.config.hostId)
    await poll(() => host.locator('.host-job a').count()).toBe(running.length)
    expect(await host.getAttribute('data-status')).toBe('up')
    expect(await host.locator('.host-status').textContent()).toBe('up')
    // A job is in the beat from its start, its slot marked busy as its process starts.
    await poll(() => host.locator('.host-facts').textContent()).toContain(
      `${slots} busy, 0 free (of ${slots})`,
    )
    expect(await host.locator('.host-facts').textContent()).toContain('0.1.0')
    expect(await host.locator('.engine-list').textContent()).toContain('simulate')
    for (const id of running)
      expect(await host.locator(`.host-job a[href="#job=${id}"]`).textContent()).toBe(id)
    expect(await page.locator('#hosts-summary').textContent()).toMatch(
      new RegExp(`^1 host: 1 up · ${slots} of ${slots} slots busy · ${slots} jobs? running$`),
    )

    // A running job's link opens its detail over the hosts view; closing it comes back to the view.
    const first = running[0] ?? ''
    await host.locator(`.host-job a[href="#job=${first}"]`).click()
    await poll(() => page.locator('#d-id').textContent()).toBe(first)
    expect(await page.locator('#hosts-view').isVisible()).toBe(true)
    await page.keyboard.press('Escape')
    await poll(() => page.locator('#detail').evaluate((d) => (d as unknown as { open: boolean }).open)).toBe(
      false,
    )
    expect(new URL(page.url()).hash).toBe('#hosts')
    expect(await page.locator('#hosts-view').isVisible()).toBe(true)
  })

  it('draws a GPU’s memory used, reserved and total, and shows a host that stops beating as gone', async () => {
    const hostId = `${stack.prefix}-gpu-box`
    const hb = new Heartbeat(stack.redis, stack.config.queuePrefix, gpuHost(hostId, 'lora-on-gpu'), {
      intervalMs: 1000,
    })
    hb.start()
    try {
      const gpu = card(hostId).locator('.gpu[data-gpu-index="0"]')
      await gpu.waitFor()
      expect(await gpu.locator('.gpu-name').textContent()).toBe('GPU 0 · NVIDIA H200')
      expect(await gpu.locator('.gpu-util').textContent()).toBe('87% busy · 1 job')
      // In words (what a screen reader reads), and as the bar's two segments out of the total.
      expect(await gpu.locator('.vram-text').textContent()).toBe(
        '20 GiB used 39 GiB reserved of 140 GiB memory, 101 GiB free for jobs',
      )
      const share = (sel: string) =>
        gpu.locator(sel).evaluate((el) => (el as unknown as { style: { width: string } }).style.width)
      expect(await share('.vram-used')).toBe(`${((20_480 / 143_771) * 100).toFixed(1)}%`)
      expect(await share('.vram-reserved')).toBe(`${((40_000 / 143_771) * 100).toFixed(1)}%`)
      expect(await card(hostId).locator('.host-job').textContent()).toContain('slot 0 (GPU 0)')
      await shot('hosts-1280')

      // What a host that dies leaves: its record, no more beats.
      await hb.stop({ remove: false })
      await poll(() => card(hostId).getAttribute('data-status')).toBe('gone')
      expect(await card(hostId).locator('.host-status').textContent()).toBe('gone')
      expect(await card(hostId).locator('.host-warning').textContent()).toMatch(/^No heartbeat for \d/)
      expect(await page.locator('#hosts-summary').textContent()).toMatch(/^2 hosts: 1 up, 1 gone · /)
      // The live host is listed first, the gone one after it.
      expect(
        await page
          .locator('#host-cards > article')
          .evaluateAll((els) => els.map((e) => e.getAttribute('data-host-id'))),
      ).toEqual([stack.config.hostId, hostId])
      await shot('hosts-gone-1280')
    } finally {
      await hb.stop()
    }
  })

  it('keeps the queue strip in sight on every view, its counts following the jobs submitted', async () => {
    expect(await page.locator('#queue-strip').isVisible()).toBe(true)
    await page.getByRole('link', { name: 'Jobs', exact: true }).click()
    await poll(() => page.locator('#hosts-view').isHidden()).toBe(true)
    expect(await page.locator('#main').isVisible()).toBe(true)
    expect(await page.locator('#queue-strip').isVisible()).toBe(true)
    await poll(() => queueCount('running')).toBe(running.length)
    const before = await queueCount('waiting')
    // Every slot is taken by the long jobs: what is submitted now waits.
    for (const seed of ['1', '2']) {
      await page.selectOption('#f-type', 'render_video')
      await page.fill('#video-prompt', 'a red fox')
      await page.fill('#video-seed', seed)
      await page.fill('#video-frames', '3')
      await page.getByRole('button', { name: 'Submit job' }).click()
      // The submit status links the new job (after the first, a link to a job other than the last one).
      const submitted = async () => {
        const href = await page
          .locator('#submit-status a')
          .getAttribute('href', { timeout: 100 })
          .catch(() => null)
        const id = href ? decodeURIComponent(href.replace('#job=', '')) : ''
        return waiting.includes(id) ? '' : id
      }
      await poll(submitted).not.toBe('')
      waiting.push(await submitted())
    }
    await poll(() => queueCount('waiting')).toBe(before + 2)
    expect(await page.locator('#q-oldest').textContent()).toMatch(/^oldest waiting \d+(\.\d)? (ms|s)$/)
    await page.locator('#queue-types summary').click()
    await poll(() =>
      page.locator('#queue-type-rows tr[data-type="render_video"] td').first().textContent(),
    ).toBe('2')
    expect(await page.locator('#queue-type-rows tr[data-type="train_lora"] td').nth(1).textContent()).toBe(
      String(running.length),
    )
    // BullMQ's own states are told apart from the statuses: its delayed and failed sets hold more than those.
    expect(await page.locator('#queue-bullmq').textContent()).toMatch(
      /^BullMQ, the whole queue: \d+ waiting, \d+ active, \d+ delayed \(retry backoffs, .*\), \d+ failed \(cancelled ones too\), \d+ completed\.$/,
    )
    await page.locator('#queue-types summary').click()

    // Cancelled, they wait no more.
    for (const id of waiting) await fetch(stack.url(`/api/jobs/${id}/cancel`), { method: 'POST' })
    const waitingNow = async () => {
      const q = await api<QueueBody>('/api/queue')
      return q.byState.waiting + q.byState.prioritized
    }
    await poll(waitingNow).toBe(before)
    await poll(() => queueCount('waiting')).toBe(before)
  })

  it('searches by an 8-character id prefix and by message text, kept in the location; clearing restores', async () => {
    const all = (await listed()).length
    await poll(() => page.locator('#job-rows tr').count()).toBe(all)
    const video = waiting[0] ?? ''
    const prefix = video.slice(0, 8)
    expect(await listed(prefix)).toHaveLength(1)

    await page.fill('#filter-q', prefix)
    await poll(rowIds).toEqual([video])
    expect(new URLSearchParams(new URL(page.url()).search).get('q')).toBe(prefix)
    expect(await page.locator('#list-count').textContent()).toBe('Showing all 1 job that matches.')

    // The long jobs' messages are "step n/12000"; no other job says "step".
    await page.fill('#filter-q', 'STEP')
    await poll(async () => (await rowIds()).sort()).toEqual([...running].sort())
    await shot('search-1280', { screen: true })
    // With the status filter as well: none of the running jobs is cancelled.
    await page.selectOption('#filter-status', 'cancelled')
    await poll(() => page.locator('#jobs-note').textContent()).toBe(
      'No jobs match “STEP” with these filters. Clear the search to see all.',
    )
    expect(new URL(page.url()).search).toBe('?q=STEP&status=cancelled')

    // A reload shows the same list.
    await page.selectOption('#filter-status', 'running')
    await page.reload()
    expect(await page.inputValue('#filter-q')).toBe('STEP')
    expect(await page.inputValue('#filter-status')).toBe('running')
    await poll(async () => (await rowIds()).sort()).toEqual([...running].sort())

    await page.fill('#filter-q', '')
    await page.selectOption('#filter-status', '')
    await poll(() => page.locator('#job-rows tr').count()).toBe(all)
    expect(new URL(page.url()).search).toBe('')
  })

  it('pages the list visibly: says how many are shown, loads the next page and says when all are', async () => {
    for (let i = 0; i < 60; i++)
      await stack.insertJob(`page-${String(i).padStart(2, '0')}-${stack.prefix}`, 'completed')
    const all = (await listed()).length
    expect(all).toBeGreaterThan(60)
    await page.getByRole('button', { name: 'Refresh' }).click()
    await poll(() => page.locator('#list-count').textContent()).toBe('Showing 1–50; there are more.')
    expect(await page.locator('#job-rows tr').count()).toBe(50)
    const more = page.getByRole('button', { name: 'Load more (next 50)' })
    await more.click()
    await poll(() => page.locator('#job-rows tr').count()).toBe(all)
    await poll(() => page.locator('#list-count').textContent()).toBe(`Showing all ${all} jobs.`)
    expect(await more.isHidden()).toBe(true)
    // One page after another, no job twice.
    expect(new Set(await rowIds()).size).toBe(all)
  })

  it('writes every time one way: relative, with the local date and time in its tooltip', async () => {
    const created = page.locator('#job-rows tr time').first()
    expect(await created.textContent()).toMatch(/^(now|\d+ (seconds?|minutes?) ago)$/)
    const title = (await created.getAttribute('title')) ?? ''
    const datetime = (await created.getAttribute('datetime')) ?? ''
    expect(Date.parse(datetime)).toBeGreaterThan(Date.now() - 3_600_000)
    // The tooltip has the date as well as the time, whatever the day.
    expect(title).toMatch(/\d{4}/)
    expect(title).toMatch(/\d{1,2}:\d{2}:\d{2}/)
    await page.goto(stack.url('/#hosts'))
    const host = card(stack.config.hostId)
    await host.waitFor()
    for (const t of await host.locator('time').all()) {
      expect(await t.textContent()).toMatch(/^(now|\d+ \w+ ago|yesterday)$/)
      expect(await t.getAttribute('title')).toMatch(/\d{1,2}:\d{2}:\d{2}/)
    }
  })

  it('fits a 390 px phone: the list as cards, the hosts stacked, nothing wider than the screen', async () => {
    await page.setViewportSize({ width: 390, height: 844 })
    await page.goto(stack.url('/#hosts'))
    await card(stack.config.hostId).locator('.host-job').first().waitFor()
    expect(await pageWidth(page)).toBeLessThanOrEqual(390)
    const box = await card(stack.config.hostId).boundingBox()
    expect(box?.width).toBeLessThanOrEqual(390)
    await shot('hosts-390')

    await page.getByRole('link', { name: 'Jobs', exact: true }).click()
    await poll(() => page.locator('#job-rows tr').count()).toBeGreaterThan(0)
    expect(await pageWidth(page)).toBeLessThanOrEqual(390)
    // Each row a card: the status beside the id, the progress under them, all inside the screen.
    const first = page.locator('#job-rows tr').first()
    const [id, status, progress] = await Promise.all(
      ['.c-id', '.c-status', '.c-progress'].map(
        async (c) => (await first.locator(c).boundingBox()) ?? { x: 0, y: 0, width: 999, height: 0 },
      ),
    )
    expect(Math.abs((status?.y ?? 0) - (id?.y ?? 99))).toBeLessThan(12)
    expect(status?.x).toBeGreaterThan(id?.x ?? 0)
    expect(progress?.y).toBeGreaterThan((id?.y ?? 0) + 10)
    for (const b of [id, status, progress]) expect((b?.x ?? 0) + (b?.width ?? 999)).toBeLessThanOrEqual(390)
    await page.locator('#jobs-heading').scrollIntoViewIfNeeded()
    await shot('jobs-390', { screen: true })
    await page.setViewportSize({ width: 1280, height: 900 })
    await page.evaluate(() =>
      (globalThis as unknown as { scrollTo(x: number, y: number): void }).scrollTo(0, 0),
    )
    await shot('jobs-1280', { screen: true })
    await page.locator('#list-count').scrollIntoViewIfNeeded()
    await shot('jobs-paging-1280', { screen: true })
  })

  it('says how to start a host when none beats, and shows a banner, not a blank view, on a 503', async () => {
    // A gateway of its own queue (no host beats there), whose Redis goes through a proxy the test cuts.
    const proxy = await startTcpProxy(Number(new URL(TEST_REDIS_URL).port || 6379))
    const database = await openDatabase({ url: iso.url, poolSize: 2 })
    const s3 = createS3Client({ ...stack.config.s3, endpoint: stack.s3.endpoint })
    const gw = await startGateway({
      config: {
        ...stack.config,
        gatewayPort: 0,
        queuePrefix: `${stack.prefix}-empty`,
        redisUrl: `redis://127.0.0.1:${proxy.port}`,
      },
      database,
      s3,
      logger: quietLogger(),
    })
    try {
      await page.goto(`${gw.url}/#hosts`)
      await poll(() => page.locator('#hosts-note').textContent()).toContain('No GPU host is heartbeating')
      expect(await page.locator('#hosts-note code').first().textContent()).toBe('npm run gpu-host')
      expect(await page.locator('#hosts-summary').textContent()).toBe('No hosts.')
      await shot('hosts-empty-1280')
      await proxy.cut()
      // The empty state gives way to what is wrong; the banner says it (the queue strip's, or the view's).
      await poll(() => page.locator('#hosts-note').textContent()).toMatch(
        /^The hosts cannot be listed \(Redis is unavailable/,
      )
      expect(await page.locator('#hosts-summary').textContent()).toBe('Not known now.')
      expect(await page.locator('#banner').textContent()).toMatch(
        /cannot be (listed|read) \(Redis is unavailable/,
      )
      expect(await page.locator('#banner').isVisible()).toBe(true)
      await shot('hosts-503-1280')
    } finally {
      await page.goto('about:blank')
      await gw.close()
      await database.close()
      s3.destroy()
      await proxy.close()
    }
  })

  it('threw no error in the page', () => {
    expect(pageErrors).toEqual([])
  })
})
