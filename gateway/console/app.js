// The web console: submit jobs, follow them live over one WebSocket, look at a job's details, events and
// artifacts, cancel it. Plain ES modules, no build step, no dependencies; talks only to this gateway.
// This module starts the page: each view is its own module (topbar, submit-form, jobs-list, job-detail),
// sharing the store (state.js), the API (api.js) and the live updates (live.js) of the one WebSocket
// made here (stream.js, which the CLI shares).

import { route } from './job-detail.js'
import { loadList } from './jobs-list.js'
import { liveOptions, startLive } from './live.js'
import { JobStream } from './stream.js'
import { showType } from './submit-form.js'
import './topbar.js'

showType()
startLive(new JobStream(liveOptions))
void loadList()
window.addEventListener('hashchange', route)
route()
