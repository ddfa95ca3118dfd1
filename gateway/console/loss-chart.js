// The detail's loss curve: the metric points a job reported with its progress (`ctx.progress(pct, msg,
// { loss })`), the stored ones from GET /api/jobs/:jobId/metrics and the live ones from its events,
// drawn as an inline SVG line per attempt over the attempt's progress (0 to 100 %).

import { api, jobPath } from './api.js'
import { $ } from './dom.js'
import { store } from './state.js'

const SVG = 'http://www.w3.org/2000/svg'
/** The drawing's height in its own units; its width is the panel's (600 while the panel is hidden). */
const H = 200
const PAD = { left: 52, right: 24, top: 12, bottom: 28 }

const svg = (tag, attrs = {}, ...children) => {
  const el = document.createElementNS(SVG, tag)
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v))
  el.append(...children)
  return el
}

/** The metric charted: `loss` when the job reports it, else the first it reports. */
const metricOf = (points) =>
  points.some((p) => 'loss' in p.metrics) ? 'loss' : Object.keys(points[0]?.metrics ?? {})[0]

/** A number as short as its scale needs. */
const num = (x) => (Math.abs(x) >= 100 ? x.toFixed(0) : Number(x.toPrecision(3)).toString())

/** Per detail: every point by seq, whether the stored ones are in, and whether a redraw is due. */
const chartOf = (d) => {
  d.loss ??= { points: new Map(), dirty: false }
  return d.loss
}

/** Adds a point (an event that carried metrics, or a stored one); returns whether it was new. */
function addPoint(d, p) {
  const chart = chartOf(d)
  if (!p.metrics || chart.points.has(p.seq)) return false
  chart.points.set(p.seq, p)
  chart.dirty = true
  return true
}

/** Loads the job's stored points (once per detail), then draws. */
export function loadLoss(d) {
  chartOf(d)
  void api(`${jobPath(d.jobId)}/metrics`).then(
    (body) => {
      if (store.get().detail !== d) return
      for (const p of body.points) addPoint(d, p)
      renderLoss(d)
    },
    () => {
      // No stored curve (an older gateway, a backend down): live points still draw one.
    },
  )
}

/** A live event of the detail's job: its metrics, if any, join the curve (drawn at the next frame). */
export const addLossEvent = (d, e) =>
  addPoint(d, { seq: e.seq, attempt: e.attempt, progress: e.progress, metrics: e.metrics })

/** Draws the curve if points came since the last drawing. */
export function renderLoss(d) {
  const chart = chartOf(d)
  if (!chart.dirty) return
  chart.dirty = false
  const all = [...chart.points.values()].sort((a, b) => a.seq - b.seq)
  const name = metricOf(all)
  const points = all.filter((p) => typeof p.metrics[name] === 'number')
  $('d-loss-section').hidden = points.length === 0
  if (points.length === 0) return
  $('d-loss-heading').textContent = name === 'loss' ? 'Loss' : `Metric: ${name}`
  // One unit a CSS pixel at the panel's width, so the axis labels keep their size on a phone.
  const W = Math.max(300, Math.round($('d-loss').clientWidth) || 600)
  const values = points.map((p) => p.metrics[name])
  let lo = Math.min(...values)
  let hi = Math.max(...values)
  if (hi === lo) {
    lo -= 0.5 * (Math.abs(lo) || 1)
    hi += 0.5 * (Math.abs(hi) || 1)
  }
  const x = (pct) => PAD.left + (Math.min(100, Math.max(0, pct)) / 100) * (W - PAD.left - PAD.right)
  const y = (v) => PAD.top + ((hi - v) / (hi - lo)) * (H - PAD.top - PAD.bottom)
  const byAttempt = new Map()
  for (const p of points) {
    if (!byAttempt.has(p.attempt)) byAttempt.set(p.attempt, [])
    byAttempt.get(p.attempt).push(p)
  }
  const last = points.at(-1)
  const min = points.reduce((m, p) => (p.metrics[name] < m.metrics[name] ? p : m))
  const attempts = [...byAttempt.keys()]
  const latest = attempts.at(-1)
  const desc = `${points.length} points${attempts.length > 1 ? ` over attempts ${attempts.join(', ')}` : ''}; min ${num(min.metrics[name])} at ${Math.floor(min.progress)}%, last ${num(last.metrics[name])} at ${Math.floor(last.progress)}%.`
  const grid = [hi, (hi + lo) / 2, lo]
  const chartEl = svg(
    'svg',
    {
      viewBox: `0 0 ${W} ${H}`,
      role: 'img',
      'aria-labelledby': 'd-loss-title',
      'aria-describedby': 'd-loss-desc',
      class: 'chart',
      'data-points': points.length,
    },
    svg('title', { id: 'd-loss-title' }, `${name} over progress`),
    svg('desc', { id: 'd-loss-desc' }, desc),
    ...grid.map((v) => svg('line', { class: 'grid', x1: PAD.left, x2: W - PAD.right, y1: y(v), y2: y(v) })),
    ...grid.map((v) =>
      svg('text', { class: 'axis', x: PAD.left - 6, y: y(v) + 4, 'text-anchor': 'end' }, num(v)),
    ),
    ...[0, 50, 100].map((pct) =>
      svg('text', { class: 'axis', x: x(pct), y: H - 8, 'text-anchor': 'middle' }, `${pct}%`),
    ),
    ...[...byAttempt].map(([attempt, ps]) =>
      svg('polyline', {
        class: attempt === latest ? 'line' : 'line earlier',
        'data-attempt': attempt,
        points: ps.map((p) => `${x(p.progress).toFixed(1)},${y(p.metrics[name]).toFixed(1)}`).join(' '),
      }),
    ),
    svg('circle', { class: 'dot', cx: x(last.progress), cy: y(last.metrics[name]), r: 3.5 }),
  )
  $('d-loss').replaceChildren(chartEl)
  $('d-loss-summary').textContent = desc
}
