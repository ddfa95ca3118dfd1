// Previews of a job's artifacts in its detail: images inline, a player for audio and video, and a summary
// of a LoRA's safetensors header (read with two Range requests, never the whole file). With a token the
// media are fetched with its header into blob URLs (an <img> or <audio> cannot send one).

import { fetchWithToken } from './api.js'
import { h } from './dom.js'
import { store } from './state.js'

/** Media a browser plays or shows by content type; the rest get no preview. */
const MEDIA = [
  [/^image\/(png|jpeg|gif|webp|avif)$/, 'img'],
  [/^audio\/(wav|x-wav|wave|mpeg|ogg|flac|webm)$/, 'audio'],
  [/^video\/(mp4|webm|ogg)$/, 'video'],
]
/** The header metadata worth showing for a kohya LoRA (ss_* keys), in this order, when present. */
const LORA_KEYS = [
  'ss_network_dim',
  'ss_network_alpha',
  'ss_base_model_version',
  'ss_resolution',
  'ss_epoch',
  'ss_steps',
]
const MAX_HEADER_BYTES = 16 * 1024 * 1024

/** The preview element of `artifact`, or null when it has none. Loads lazily, after it is shown. */
export function previewOf(artifact) {
  const kind = MEDIA.find(([pattern]) => pattern.test(artifact.contentType))?.[1]
  if (kind) return media(kind, artifact)
  if (artifact.path.endsWith('.safetensors')) return safetensorsSummary(artifact)
  return null
}

function media(kind, artifact) {
  const el = h(kind, {
    class: 'preview',
    'data-path': artifact.path,
    ...(kind === 'img' ? { alt: `Preview of ${artifact.path}` } : { controls: '', preload: 'metadata' }),
  })
  void sourceOf(artifact).then(
    (src) => {
      el.src = src
    },
    () => el.replaceWith(h('p', { class: 'empty' }, `No preview of ${artifact.path}.`)),
  )
  return h('figure', { class: 'preview' }, el, h('figcaption', {}, artifact.path))
}

/** Where the element loads the file from: the download URL itself, or a blob of it fetched with the token. */
async function sourceOf(artifact) {
  if (!store.get().token) return artifact.url
  const res = await fetchWithToken(artifact.url)
  if (!res.ok) throw new Error(`HTTP ${res.status}`)
  return URL.createObjectURL(await res.blob())
}

async function bytes(artifact, from, to) {
  const res = await fetchWithToken(artifact.url, { headers: { range: `bytes=${from}-${to}` } })
  if (!res.ok) throw new Error(`HTTP ${res.status}`)
  return new Uint8Array(await res.arrayBuffer())
}

/** Reads the safetensors header: an 8-byte little-endian length, then that much JSON. */
export async function readSafetensorsHeader(artifact) {
  const head = await bytes(artifact, 0, 7)
  const length = Number(new DataView(head.buffer, head.byteOffset, 8).getBigUint64(0, true))
  if (length <= 0 || length > MAX_HEADER_BYTES || length + 8 > artifact.size)
    throw new Error('not a safetensors file')
  return JSON.parse(new TextDecoder().decode(await bytes(artifact, 8, 8 + length - 1)))
}

function safetensorsSummary(artifact) {
  const box = h(
    'div',
    { class: 'preview safetensors', 'data-path': artifact.path },
    `Reading ${artifact.path}…`,
  )
  void readSafetensorsHeader(artifact).then(
    (header) => {
      const { __metadata__: meta = {}, ...tensors } = header
      const dtypes = [...new Set(Object.values(tensors).map((t) => t.dtype))].join(', ')
      const rows = [
        ['Tensors', String(Object.keys(tensors).length)],
        ['Types', dtypes],
        ...LORA_KEYS.filter((k) => k in meta).map((k) => [k.replace(/^ss_/, ''), String(meta[k])]),
      ]
      box.replaceChildren(
        h('p', {}, h('code', {}, artifact.path)),
        h('dl', { class: 'facts' }, ...rows.map(([k, v]) => h('div', {}, h('dt', {}, k), h('dd', {}, v)))),
      )
    },
    (err) => box.replaceChildren(`No summary of ${artifact.path}: ${err.message}`),
  )
  return box
}
