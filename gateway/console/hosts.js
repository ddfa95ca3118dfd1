// The hosts view (`#hosts`): every GPU host that heartbeats (GET /api/hosts) as a card: up, draining or
// gone, its version, since when it runs and when it was last heard from, its slots, each GPU's memory
// (used, reserved for its jobs, total) and load, its engines, and the jobs it runs, each a link to the
// job's detail. Asked again every few seconds while the view is shown.

import { api } from './api.js'
import { $, h, hideBanner, showBanner } from './dom.js'
import { fmtBytes, fmtDuration, pctText, shortId, timeEl } from './format.js'

const POLL_MS = 3_000
const MIB = 1024 * 1024
/** Up hosts first, then the ones finishing their jobs, then the gone. */
const STATUS_ORDER = { up: 0, draining: 1, gone: 2 }

let shown = false
let timer = 0
/** The latest request: an older answer arriving late is dropped. */
let ticket = 0

/** Shows or hides the view's data: while shown, the hosts are asked for now and every few seconds. */
export function showHosts(on) {
  if (on === shown) return
  shown = on
  clearInterval(timer)
  if (!on) {
    ticket++
    hideBanner('hosts')
    return
  }
  void loadHosts()
  timer = window.setInterval(() => {
    if (document.visibilityState === 'visible') void loadHosts()
  }, POLL_MS)
}

async function loadHosts() {
  const mine = ++ticket
  try {
    const body = await api('/api/hosts')
    if (mine !== ticket) return
    hideBanner('hosts')
    render(body.hosts)
  } catch (err) {
    if (mine !== ticket) return
    if (err.status === 401) return setNote('Enter an API token to see the hosts.')
    const why = `The hosts cannot be listed (${err.message}).`
    showBanner(`${why} Trying again every ${POLL_MS / 1000} s.`, 'hosts')
    $('hosts-summary').textContent = 'Not known now.'
    // The cards already shown stay (marked stale): the last known state is better than none.
    $('host-cards').dataset.stale = 'true'
    if (!$('host-cards').childElementCount) setNote(why)
  }
}

function setNote(text, ...children) {
  const note = $('hosts-note')
  note.replaceChildren(text, ...children)
  note.hidden = !text
}

function render(hosts) {
  const cards = $('host-cards')
  delete cards.dataset.stale
  const sorted = [...hosts].sort(
    (a, b) => STATUS_ORDER[a.status] - STATUS_ORDER[b.status] || a.hostId.localeCompare(b.hostId),
  )
  $('hosts-summary').textContent = summary(sorted)
  if (sorted.length === 0)
    setNote(
      'No GPU host is heartbeating. Start one where it reaches the same Redis, Postgres and S3: ',
      h('code', {}, 'npm run gpu-host'),
      ' (or ',
      h('code', {}, 'npm start'),
      ' for the gateway and a host on one machine). It shows here within seconds.',
    )
  else setNote('')
  // The cards are made anew each time; the element with keyboard focus gets it back in its new card.
  const focused = /** @type {HTMLElement | null} */ (document.activeElement)?.dataset?.focusKey
  cards.replaceChildren(...sorted.map(hostCard))
  if (focused)
    /** @type {HTMLElement | null} */ (
      cards.querySelector(`[data-focus-key="${CSS.escape(focused)}"]`)
    )?.focus()
}

function summary(hosts) {
  if (hosts.length === 0) return 'No hosts.'
  const by = (s) => hosts.filter((x) => x.status === s).length
  const live = hosts.filter((x) => x.status !== 'gone')
  const busy = live.reduce((n, x) => n + x.slots.busy, 0)
  const total = live.reduce((n, x) => n + x.slots.total, 0)
  const running = live.reduce((n, x) => n + x.jobs.length, 0)
  const parts = [`${by('up')} up`]
  if (by('draining')) parts.push(`${by('draining')} draining`)
  if (by('gone')) parts.push(`${by('gone')} gone`)
  return `${hosts.length} ${hosts.length === 1 ? 'host' : 'hosts'}: ${parts.join(', ')} · ${busy} of ${total} slots busy · ${running} ${running === 1 ? 'job' : 'jobs'} running`
}

const STATUS_TEXT = {
  up: 'up',
  draining: 'draining: finishing its jobs, taking no new ones',
  gone: 'gone',
}

function hostCard(host) {
  const gone = host.status === 'gone'
  const head = h(
    'div',
    { class: 'host-head' },
    h('h3', {}, h('code', {}, host.hostId)),
    h('span', { class: 'badge host-status', 'data-status': host.status }, STATUS_TEXT[host.status]),
  )
  const warning = gone
    ? h(
        'p',
        { class: 'host-warning' },
        `No heartbeat for ${fmtDuration(host.lastSeenSec * 1000)}: the host has stopped or cannot reach Redis. `,
        'What it ran is as last reported; it is listed until its record expires.',
      )
    : null
  const facts = h(
    'dl',
    { class: 'host-facts' },
    fact('Version', host.version),
    fact('Up since', timeEl(host.startedAt)),
    fact('Last seen', timeEl(host.lastSeen)),
    fact('Slots', `${host.slots.busy} busy, ${host.slots.free} free (of ${host.slots.total})`),
  )
  return h(
    'article',
    {
      class: 'host-card panel',
      'data-host-id': host.hostId,
      'data-status': host.status,
      'aria-label': `Host ${host.hostId}, ${host.status}`,
    },
    head,
    warning,
    facts,
    gpuSection(host),
    enginesSection(host),
    jobsSection(host),
  )
}

const fact = (term, ...value) => h('div', {}, h('dt', {}, term), h('dd', {}, ...value))

/** The GPU index of each slot (virtual slots have none). */
const gpuOfSlot = (host) => new Map(host.slots.list.map((s) => [s.id, s.gpu?.index ?? null]))

function gpuSection(host) {
  const section = h('section', { class: 'host-gpus' }, h('h4', {}, 'GPUs'))
  if (host.gpus.length === 0) {
    section.append(
      h('p', { class: 'hint' }, `No GPU reported (no nvidia-smi): ${host.slots.total} virtual slots.`),
      slotList(host),
    )
    return section
  }
  const slotGpu = gpuOfSlot(host)
  section.append(
    h(
      'ul',
      { class: 'gpu-list' },
      ...host.gpus.map((g) => {
        const jobs = host.jobs.filter((j) => j.slot !== null && slotGpu.get(j.slot) === g.index)
        // The host counts its jobs per GPU (several share one by VRAM); an older host sends no count.
        const jobCount = typeof g.jobs === 'number' ? g.jobs : jobs.length
        return h(
          'li',
          { class: 'gpu', 'data-gpu-index': String(g.index), title: g.uuid },
          h(
            'div',
            { class: 'gpu-head' },
            h('span', { class: 'gpu-name' }, `GPU ${g.index} · ${g.name}`),
            h(
              'span',
              { class: 'gpu-util' },
              g.utilizationPct === null || g.utilizationPct === undefined
                ? 'utilisation unknown'
                : `${Math.round(g.utilizationPct)}% busy`,
              ` · ${jobCount} ${jobCount === 1 ? 'job' : 'jobs'}`,
            ),
          ),
          vramBar(g),
          Array.isArray(g.mig) && g.mig.length > 0 ? migList(g.mig) : null,
        )
      }),
    ),
  )
  return section
}

/** The reserved MiB of a GPU (`memoryReservedMb`, schema/hosts.ts), or null where a host sends none. */
const reservedOf = (g) => (typeof g.memoryReservedMb === 'number' ? g.memoryReservedMb : null)

/** A MIG GPU's instances: each a device of its own, with its own memory and jobs. */
function migList(instances) {
  return h(
    'ul',
    { class: 'mig-list' },
    ...instances.map((m) =>
      h(
        'li',
        { class: 'mig', title: m.uuid },
        `MIG ${m.profile} (device ${m.device}): ${m.jobs} ${m.jobs === 1 ? 'job' : 'jobs'}, ` +
          `${fmtBytes(m.memoryReservedMb * MIB)} reserved, ${fmtBytes(m.memoryFreeMb * MIB)} free ` +
          `of ${fmtBytes(m.memoryTotalMb * MIB)}`,
      ),
    ),
  )
}

/**
 * The memory of a GPU as a bar: used (what nvidia-smi counts, every process's) over reserved (what the
 * host set aside for its jobs, which they may not use yet), both from the left, out of the total; and in
 * words, which is what a screen reader reads.
 */
function vramBar(g) {
  const total = g.memoryTotalMb
  const reserved = reservedOf(g)
  const share = (mb) => `${Math.min(100, Math.max(0, (mb / total) * 100)).toFixed(1)}%`
  const used = h('span', { class: 'vram-used' })
  used.style.width = share(g.memoryUsedMb)
  const bar = h('div', { class: 'vram-bar', 'aria-hidden': 'true' })
  if (reserved !== null && reserved > 0) {
    const res = h('span', { class: 'vram-reserved' })
    res.style.width = share(reserved)
    bar.append(res)
  }
  bar.append(used)
  const words = [`${fmtBytes(g.memoryUsedMb * MIB)} used`]
  if (reserved !== null) words.push(`${fmtBytes(reserved * MIB)} reserved`)
  words.push(`of ${fmtBytes(total * MIB)} memory`)
  // Free: what admission still has for new jobs (total, less other processes' use and the reservations).
  const free = typeof g.memoryFreeMb === 'number' ? `, ${fmtBytes(g.memoryFreeMb * MIB)} free for jobs` : ''
  return h(
    'div',
    { class: 'vram' },
    bar,
    h(
      'p',
      { class: 'vram-text' },
      h('span', { class: 'key key-used', 'aria-hidden': 'true' }),
      words[0],
      reserved !== null ? h('span', { class: 'key key-reserved', 'aria-hidden': 'true' }) : null,
      reserved !== null ? ` ${words[1]}` : null,
      ` ${words.at(-1)}${free}`,
    ),
  )
}

function slotList(host) {
  return h(
    'ul',
    { class: 'slot-list' },
    ...host.slots.list.map((s) =>
      h(
        'li',
        { class: 'slot', 'data-busy': String(s.busy) },
        `slot ${s.id}${s.gpu ? ` · GPU ${s.gpu.index}` : ''}: ${s.busy ? 'busy' : 'free'}`,
      ),
    ),
  )
}

function enginesSection(host) {
  return h(
    'section',
    { class: 'host-engines' },
    h('h4', {}, 'Engines'),
    h(
      'dl',
      { class: 'engine-list' },
      ...Object.entries(host.engines).map(([type, engines]) => fact(type, engines.join(', '))),
    ),
  )
}

function jobsSection(host) {
  const title = host.status === 'gone' ? 'Jobs (as last reported)' : 'Running jobs'
  const section = h('section', { class: 'host-jobs' }, h('h4', {}, `${title} (${host.jobs.length})`))
  if (host.jobs.length === 0) {
    section.append(h('p', { class: 'hint' }, 'None.'))
    return section
  }
  const slotGpu = gpuOfSlot(host)
  section.append(
    h(
      'ul',
      { class: 'host-job-list' },
      ...host.jobs.map((j) => {
        const gpu = j.slot === null ? undefined : slotGpu.get(j.slot)
        const where =
          j.slot === null
            ? 'waiting for its engine or GPU memory'
            : `slot ${j.slot}${gpu === null || gpu === undefined ? '' : ` (GPU ${gpu})`}`
        const name = h(
          'a',
          {
            href: `#job=${encodeURIComponent(j.jobId)}`,
            class: 'job-link',
            title: j.jobId,
            'data-focus-key': `job:${j.jobId}`,
          },
          shortId(j.jobId),
        )
        return h(
          'li',
          { class: 'host-job', 'data-job-id': j.jobId },
          name,
          ` ${j.type} · ${pctText(j.progress)}`,
          j.attempt === null ? '' : ` · attempt ${j.attempt}`,
          ` · ${where}`,
          j.startedAt ? ' · started ' : '',
          j.startedAt ? timeEl(j.startedAt) : '',
        )
      }),
    ),
  )
  return section
}
