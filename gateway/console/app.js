// The web console: submit jobs, follow them live over one WebSocket, look at a job's details, events and
// artifacts, cancel it; see the GPU hosts and how deep the queue is. Plain ES modules, no build step, no
// dependencies; talks only to this gateway.
// This module starts the page and routes it: each view is its own module (topbar, submit-form,
// jobs-list, job-detail, hosts, queue-overview), sharing the store (state.js), the API (api.js) and the
// live updates (live.js) of the one WebSocket made here (stream.js, which the CLI shares).
//
// Routes (the location's hash): `#hosts` the hosts view; `#job=<id>` a job's detail, over the view it
// was opened from; anything else (`#jobs`, none) the jobs view.

import { $ } from './dom.js'
import { showHosts } from './hosts.js'
import { route as routeDetail } from './job-detail.js'
import { loadJobTypes } from './job-types.js'
import { loadList, offerTypeFilter } from './jobs-list.js'
import { liveOptions, startLive } from './live.js'
import { startQueueOverview } from './queue-overview.js'
import { JobStream } from './stream.js'
import { offerTypes } from './submit-form.js'
import './topbar.js'

const VIEWS = /** @type {const} */ (['jobs', 'hosts'])
/** The view shown: a job's detail opens over it, and closing the detail comes back to it. */
let view = /** @type {(typeof VIEWS)[number]} */ ('jobs')

const viewOfHash = (hash) => (hash === '#hosts' ? 'hosts' : hash.startsWith('#job=') ? view : 'jobs')

function showView(next) {
  view = next
  for (const name of VIEWS) {
    const main = document.querySelector(`main[data-view="${name}"]`)
    if (main) main.hidden = name !== next
    const link = document.querySelector(`.views a[data-view="${name}"]`)
    if (link && name === next) link.setAttribute('aria-current', 'page')
    else link?.removeAttribute('aria-current')
  }
  showHosts(next === 'hosts')
}

function route() {
  showView(viewOfHash(location.hash))
  routeDetail()
}

startLive(new JobStream(liveOptions))
void loadList()
startQueueOverview()
window.addEventListener('hashchange', route)
route()

// The detail's close drops its `#job=` from the location; where it was opened over the hosts view, the
// location says so again (without a new history entry, as the detail does).
$('detail').addEventListener('close', () => {
  if (view === 'hosts' && location.hash !== '#hosts') history.replaceState(null, '', '#hosts')
})

// The skip link goes to the content of the view shown (its own hash would leave the view).
document.querySelector('.skip-link')?.addEventListener('click', (e) => {
  e.preventDefault()
  document.querySelector(`main[data-view="${view}"]`)?.focus()
})

// The forms come from the gateway's job catalog; the rest of the page does not wait for them.
void loadJobTypes().then((types) => {
  offerTypes(types)
  offerTypeFilter(types)
})
