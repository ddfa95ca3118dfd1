// The web console: submit jobs, follow them live over one WebSocket, look at a job's details, events and
// artifacts, cancel it. Plain ES modules, no build step, no dependencies; talks only to this gateway.
// This module starts the page: each view is its own module (topbar, submit-form, jobs-list, job-detail),
// sharing the store (state.js), the API (api.js) and the live updates (live.js) of the one WebSocket
// made here (stream.js, which the CLI shares).

import { route } from './job-detail.js'
import { loadJobTypes } from './job-types.js'
import { loadList, offerTypeFilter } from './jobs-list.js'
import { liveOptions, startLive } from './live.js'
import { JobStream } from './stream.js'
import { offerTypes } from './submit-form.js'
import './topbar.js'

startLive(new JobStream(liveOptions))
void loadList()
window.addEventListener('hashchange', route)
route()
// The forms come from the gateway's job catalog; the rest of the page does not wait for them.
void loadJobTypes().then((types) => {
  offerTypes(types)
  offerTypeFilter(types)
})
