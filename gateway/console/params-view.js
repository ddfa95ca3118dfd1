// The detail's parameters as they apply: each field of the type's params schema (from /openapi.json,
// job-types.js) with the job's value, or the schema's default marked as such when the request left it
// out; and the options every job has (timeout, max attempts, priority), each marked when it is the
// type's default.

import { $, h } from './dom.js'
import { fmtDuration } from './format.js'
import { loadJobTypes } from './job-types.js'
import { fieldsOf } from './schema-form.js'
import { store } from './state.js'

const valueText = (v) => (typeof v === 'string' ? v : JSON.stringify(v))

/** The value at `path` (`inputs.seed`) of `params`, or undefined. */
const valueAt = (params, path) =>
  path
    .split('.')
    .reduce((o, k) => (o !== null && typeof o === 'object' && Object.hasOwn(o, k) ? o[k] : undefined), params)

/** How a row's value came: `request`, `default`, `unset`, or `engine` (see ENGINE_FIELD). */
const FROM_TEXT = { engine: 'request or gateway default' }
const from = (kind) => h('span', { class: 'from', 'data-from': kind }, FROM_TEXT[kind] ?? kind)

/**
 * The gateway stores the engine a job runs on in its params, the request's or DEFAULT_ENGINE_<TYPE>'s when
 * it named none: the stored params cannot tell which, so the row does not claim either.
 */
const ENGINE_FIELD = 'engine'

function paramRow(name, value, kind) {
  return h(
    'tr',
    { 'data-param': name, 'data-from': kind },
    h('th', { scope: 'row' }, h('code', {}, name)),
    h('td', {}, value === undefined ? '—' : h('code', { class: 'value' }, valueText(value))),
    h('td', {}, from(kind)),
  )
}

/** The rows of `params` under `schema`: the schema's fields first, in its order, then any other key. */
function paramRows(schema, params) {
  const fields = schema ? fieldsOf(schema) : []
  const rows = fields.map((f) => {
    const value = valueAt(params, f.name)
    if (value !== undefined) return paramRow(f.name, value, f.name === ENGINE_FIELD ? 'engine' : 'request')
    if (f.schema.default !== undefined) return paramRow(f.name, f.schema.default, 'default')
    return paramRow(f.name, undefined, 'unset')
  })
  const covered = new Set(fields.map((f) => f.name.split('.')[0]))
  for (const [k, v] of Object.entries(params ?? {})) if (!covered.has(k)) rows.push(paramRow(k, v, 'request'))
  return rows
}

const optionText = (text, isDefault) => [text, isDefault ? from('default') : from('request')]

/** Shows the parameters and options of `job`; the schema marks come as soon as the job types are in. */
export function renderParams(job) {
  $('d-params').textContent = JSON.stringify(job.params, null, 2)
  $('d-param-rows').replaceChildren(...paramRows(null, job.params))
  void loadJobTypes().then((types) => {
    const type = types.find((t) => t.type === job.type)
    // The detail may show another job by the time the types come.
    if (type && store.get().detail?.jobId === job.jobId)
      $('d-param-rows').replaceChildren(...paramRows(type.schema, job.params))
  })
  const defaults = job.optionDefaults
  $('d-opt-timeout').replaceChildren(
    ...optionText(fmtDuration(job.timeoutSec * 1000), job.timeoutSec === defaults?.timeoutSec),
  )
  $('d-opt-attempts').replaceChildren(
    ...optionText(String(job.maxAttempts), job.maxAttempts === defaults?.maxAttempts),
  )
  $('d-opt-priority').replaceChildren(
    ...(job.priority === null || job.priority === undefined
      ? ['none (in arrival order)', from('default')]
      : optionText(`${job.priority} (1 runs first)`, false)),
  )
}
