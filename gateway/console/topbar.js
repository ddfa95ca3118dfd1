// The top bar: the state of the live connection, and the API token (kept in this browser).

import { $, hideBanner } from './dom.js'
import { refreshJob, showDetail } from './job-detail.js'
import { loadList } from './jobs-list.js'
import { onLive, restartLive } from './live.js'
import { store } from './state.js'

onLive('state', (s, info) => {
  const el = $('conn')
  el.dataset.state = s
  const { everOpen, detail } = store.get()
  const text =
    s === 'open'
      ? 'Live'
      : s === 'waiting'
        ? `Connection lost: reconnecting in ${Math.max(1, Math.round((info?.delayMs ?? 0) / 1000))} s…`
        : s === 'connecting'
          ? everOpen
            ? 'Reconnecting…'
            : 'Connecting…'
          : 'Offline'
  $('conn-text').textContent = text
  if (s === 'open') {
    // Back after a break: jobs may have been added or finished meanwhile (followed ones resume by seq).
    if (everOpen) {
      void loadList({ quiet: true })
      if (detail) void refreshJob(detail.jobId)
    }
    store.update({ everOpen: true })
  }
})

const tokenInput = /** @type {HTMLInputElement} */ ($('token'))
tokenInput.value = store.get().token

/** A new token: a new socket, the list and the detail loaded again with it. */
function setToken(token) {
  store.update({ token })
  tokenInput.value = token
  hideBanner('auth')
  restartLive()
  void loadList()
  const { detail } = store.get()
  if (detail) {
    store.update({ detail: null })
    void showDetail(detail.jobId)
  }
}

$('token-form').addEventListener('submit', (e) => {
  e.preventDefault()
  setToken(tokenInput.value.trim())
})
$('token-clear').addEventListener('click', () => setToken(''))
