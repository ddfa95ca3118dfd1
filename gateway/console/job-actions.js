// The detail's actions on its job: re-run (a new job with the same type, params and options, then opened),
// retry now (a retrying job's next attempt, before its backoff ends) and cancel, after a confirmation.
// A message about an action is shown until the job's status moves on.

import { api, jobPath } from './api.js'
import { $ } from './dom.js'
import { loadList } from './jobs-list.js'
import { jobs, store } from './state.js'
import { TERMINAL } from './stream.js'

const confirmDialog = /** @type {HTMLDialogElement} */ ($('d-confirm'))

/** Says `text` about the detail's job while it is in `status` (cleared once the status changes). */
function say(d, text, status) {
  d.actionNote = { text, status }
  $('d-action-status').textContent = text
}

/** Shows the actions `job` allows, and drops a message its status has moved past. */
export function renderActions(d, job) {
  $('d-cancel').hidden = TERMINAL.has(job.status)
  $('d-retry').hidden = job.status !== 'retrying'
  if (d.actionNote && d.actionNote.status !== job.status) {
    d.actionNote = null
    $('d-action-status').textContent = ''
  }
}

/** Wires the buttons; `refresh(jobId)` reloads a job whose state the gateway says has changed. */
export function initActions({ refresh }) {
  /** Runs `action` with its button disabled; the detail it started on must still be shown to report. */
  const run = (id, action) =>
    $(id).addEventListener('click', async () => {
      const d = store.get().detail
      if (!d) return
      const button = /** @type {HTMLButtonElement} */ ($(id))
      button.disabled = true
      try {
        await action(d)
      } finally {
        button.disabled = false
      }
    })
  const statusOf = (d) => jobs.get(d.jobId)?.status ?? ''

  run('d-rerun', async (d) => {
    say(d, 'Starting a new run…', statusOf(d))
    try {
      const r = await api(`${jobPath(d.jobId)}/rerun`, { method: 'POST' })
      if (store.get().detail !== d) return
      void loadList()
      location.hash = `job=${encodeURIComponent(r.jobId)}`
    } catch (err) {
      if (store.get().detail === d) say(d, `Could not re-run: ${err.message}`, statusOf(d))
    }
  })

  run('d-retry', async (d) => {
    say(d, 'Starting the next attempt…', 'retrying')
    try {
      await api(`${jobPath(d.jobId)}/retry`, { method: 'POST' })
      if (store.get().detail === d) say(d, 'Next attempt requested: waiting for a GPU host…', 'retrying')
    } catch (err) {
      if (store.get().detail !== d) return
      say(d, `Could not retry: ${err.message}`, statusOf(d))
      if (err.status === 409) void refresh(d.jobId)
    }
  })

  $('d-cancel').addEventListener('click', () => {
    confirmDialog.returnValue = ''
    confirmDialog.showModal()
    $('d-confirm-keep').focus()
  })
  $('d-confirm-keep').addEventListener('click', () => confirmDialog.close('keep'))
  $('d-confirm-yes').addEventListener('click', () => confirmDialog.close('cancel'))
  confirmDialog.addEventListener('close', () => {
    if (confirmDialog.returnValue === 'cancel') void cancel()
    else $('d-cancel').focus()
  })

  async function cancel() {
    const d = store.get().detail
    if (!d) return
    const button = /** @type {HTMLButtonElement} */ ($('d-cancel'))
    button.disabled = true
    say(d, 'Cancelling…', statusOf(d))
    try {
      const r = await api(`${jobPath(d.jobId)}/cancel`, { method: 'POST' })
      if (store.get().detail !== d) return
      if (r?.status === 'cancelled') void refresh(d.jobId)
      else say(d, 'Cancel requested: stopping the job…', statusOf(d))
    } catch (err) {
      if (store.get().detail !== d) return
      say(
        d,
        err.status === 409 ? 'This job has already finished.' : `Could not cancel: ${err.message}`,
        statusOf(d),
      )
      if (err.status === 409) void refresh(d.jobId)
    } finally {
      button.disabled = false
    }
  }
}
