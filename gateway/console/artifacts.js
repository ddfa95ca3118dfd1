// The detail's artifact table, and downloads that carry the token (fetched, checked against the
// manifest's SHA-256, saved as a blob).

import { fetchWithToken } from './api.js'
import { $, h } from './dom.js'
import { fmtBytes } from './format.js'
import { previewOf } from './previews.js'
import { store } from './state.js'
import { TERMINAL } from './stream.js'

const dialog = /** @type {HTMLDialogElement} */ ($('detail'))

/** Shows a job's artifacts in the detail `d`, unless they are what it shows already. */
export function renderArtifacts(d, job) {
  // The status is part of the key: an empty list says "yet" only while the job can still produce some.
  const finished = TERMINAL.has(job.status)
  const key = JSON.stringify([job.artifacts, finished])
  if (key === d.artifactsKey) return
  d.artifactsKey = key
  const list = job.artifacts ?? []
  $('d-artifacts-empty').hidden = list.length > 0
  $('d-artifacts-empty').textContent = finished ? 'No artifacts.' : 'None yet.'
  $('d-artifacts').hidden = list.length === 0
  $('d-previews').replaceChildren(...list.flatMap((a) => previewOf(a) ?? []))
  $('d-artifact-rows').replaceChildren(
    ...list.map((a) => {
      const name = a.path.split('/').pop() || 'artifact'
      const link = h(
        'a',
        { href: a.url, download: name, class: 'button', 'aria-label': `Download ${a.path}` },
        'Download',
      )
      link.addEventListener('click', (e) => {
        // A plain link cannot carry the token: fetch it with the header and save the blob.
        if (!store.get().token) return
        e.preventDefault()
        void downloadWithToken(a, name)
      })
      return h(
        'tr',
        {},
        h('td', {}, h('code', {}, a.path)),
        h('td', { class: 'time' }, fmtBytes(a.size)),
        h('td', {}, h('span', { class: 'sha', title: a.sha256 }, `${a.sha256.slice(0, 12)}…`)),
        h('td', {}, link),
      )
    }),
  )
}

async function sha256Hex(buffer) {
  if (!globalThis.crypto?.subtle) return null // only in secure contexts (https, localhost)
  const digest = await crypto.subtle.digest('SHA-256', buffer)
  return [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, '0')).join('')
}

async function downloadWithToken(artifact, name) {
  const status = $('d-download-status')
  status.textContent = `Downloading ${artifact.path}…`
  try {
    const res = await fetchWithToken(artifact.url)
    if (!res.ok) {
      const body = await res.json().catch(() => null)
      throw new Error(body?.error?.message ?? `HTTP ${res.status}`)
    }
    const blob = await res.blob()
    const sum = await sha256Hex(await blob.arrayBuffer())
    if (sum && sum !== artifact.sha256) throw new Error('the checksum does not match the manifest')
    const url = URL.createObjectURL(blob)
    const a = h('a', { href: url, download: name, hidden: '' })
    dialog.append(a)
    a.click()
    a.remove()
    setTimeout(() => URL.revokeObjectURL(url), 60_000)
    status.textContent = `Saved ${name}${sum ? ' (SHA-256 verified)' : ''}.`
  } catch (err) {
    status.textContent = `Could not download ${artifact.path}: ${err.message}`
  }
}
