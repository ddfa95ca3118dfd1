// DOM helpers of the console, and the page-wide messages (the banner, the screen reader announcer).

export const $ = (id) => /** @type {HTMLElement} */ (document.getElementById(id))

/** Creates an element: `h('a', { href, class: 'x' }, 'text', child)`. */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag)
  for (const [k, v] of Object.entries(attrs))
    if (v !== undefined && v !== null && v !== false) el.setAttribute(k, v)
  for (const c of children) if (c !== undefined && c !== null) el.append(c)
  return el
}

/** Shows the banner at the top (one at a time; `kind` says which may hide it). */
export function showBanner(text, kind = 'auth') {
  const b = $('banner')
  b.textContent = text
  b.dataset.kind = kind
  b.hidden = false
}

/** Hides the banner, or only a banner of `kind`. */
export function hideBanner(kind) {
  const b = $('banner')
  if (!kind || b.dataset.kind === kind) b.hidden = true
}

/** Says `text` to screen readers (a polite live region). */
export function announce(text) {
  $('announcer').textContent = text
}
