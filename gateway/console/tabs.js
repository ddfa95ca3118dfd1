// Tabs of the WAI-ARIA pattern: a role=tablist of role=tab buttons, each controlling its role=tabpanel
// (aria-controls). Click or Enter selects; Left/Right (wrapping), Home and End move and select.

/**
 * Makes `tablist` work as tabs; `onSelect(tabId)` hears every change. Returns `select(tabId)`.
 * @param {HTMLElement} tablist
 * @param {(tabId: string) => void} [onSelect]
 */
export function tabs(tablist, onSelect) {
  const all = () => /** @type {HTMLElement[]} */ ([...tablist.querySelectorAll('[role="tab"]')])
  const panelOf = (tab) => document.getElementById(tab.getAttribute('aria-controls') ?? '')
  function select(tabId, { focus = false } = {}) {
    for (const tab of all()) {
      const on = tab.id === tabId
      tab.setAttribute('aria-selected', String(on))
      // One tab stop for the list (roving tabindex): the arrows move within it.
      tab.tabIndex = on ? 0 : -1
      const panel = panelOf(tab)
      if (panel) panel.hidden = !on
      if (on && focus) tab.focus()
    }
    onSelect?.(tabId)
  }
  tablist.addEventListener('click', (e) => {
    const tab = /** @type {HTMLElement} */ (e.target).closest('[role="tab"]')
    if (tab && tab.getAttribute('aria-selected') !== 'true') select(tab.id)
  })
  tablist.addEventListener('keydown', (e) => {
    const list = all()
    const i = list.indexOf(/** @type {HTMLElement} */ (document.activeElement))
    if (i < 0) return
    const next = {
      ArrowRight: (i + 1) % list.length,
      ArrowLeft: (i - 1 + list.length) % list.length,
      Home: 0,
      End: list.length - 1,
    }[e.key]
    if (next === undefined) return
    e.preventDefault()
    const tab = list[next]
    if (tab) select(tab.id, { focus: true })
  })
  return select
}
