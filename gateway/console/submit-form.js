// The new-job form: its fields by type (built from each type's params schema by schema-form.js),
// reading it into an API body, showing the API's field issues next to their fields, and submitting.

import { api, jobPath, request } from './api.js'
import { $, h } from './dom.js'
import { shortId } from './format.js'
import { typeOptions } from './job-types.js'
import { matchesFilters } from './jobs-list.js'
import { syncFollows } from './live.js'
import { fieldsetFor } from './schema-form.js'
import { mergeJob, store } from './state.js'

const form = /** @type {HTMLFormElement} */ ($('submit-form'))
const typeSelect = /** @type {HTMLSelectElement} */ ($('f-type'))

/** Offers the job types (job-types.js): their options, and a fieldset each, the first one shown. */
export function offerTypes(types) {
  typeSelect.append(...typeOptions(types))
  for (const t of types) form.insertBefore(fieldsetFor(t), $('options'))
  showType()
}

const activeFieldset = () =>
  /** @type {HTMLFieldSetElement} */ (form.querySelector(`fieldset[data-type="${typeSelect.value}"]`))

/** Shows the fieldset of the chosen type (the others are disabled, so the form reader skips them). */
export function showType() {
  for (const fs of form.querySelectorAll('fieldset[data-type]')) {
    const on = fs.dataset.type === typeSelect.value
    fs.hidden = !on
    fs.disabled = !on
  }
  clearErrors()
}

function setPath(obj, keys, value) {
  let o = obj
  for (const k of keys.slice(0, -1)) {
    o[k] ??= {}
    o = o[k]
  }
  o[keys.at(-1)] = value
}

/** The value of a control as the API wants it; undefined leaves it out (the default applies). */
function readControl(el, problems) {
  if (el.type === 'checkbox') return el.checked
  if (el.type === 'number') {
    if (el.validity.badInput) {
      problems.push({ path: el.name, message: 'must be a number' })
      return undefined
    }
    return el.value.trim() === '' ? undefined : Number(el.value)
  }
  const text = el.value.trim()
  if (text === '') return undefined
  if (el.dataset.kind === 'json' && text.startsWith('{')) {
    try {
      return JSON.parse(text)
    } catch {
      problems.push({ path: el.name, message: 'must be valid JSON (or text not starting with {)' })
      return undefined
    }
  }
  return el.tagName === 'TEXTAREA' ? el.value : text
}

function readForm() {
  const problems = []
  const body = { type: typeSelect.value, params: {} }
  for (const el of activeFieldset().querySelectorAll('[name]')) {
    const value = readControl(el, problems)
    if (value !== undefined) setPath(body.params, el.name.split('.').slice(1), value)
  }
  for (const el of $('options').querySelectorAll('[name]')) {
    const value = readControl(el, problems)
    if (value !== undefined) body[el.name] = value
  }
  return { body, problems }
}

/** The control an issue path is about: `params.inputs.seed`, or the nearest enclosing field. */
function fieldFor(path) {
  const scopes = [activeFieldset(), $('options')]
  for (let p = path; p; p = p.includes('.') ? p.slice(0, p.lastIndexOf('.')) : '') {
    if (p === 'type') return typeSelect
    for (const scope of scopes) {
      const el = scope.querySelector(`[name="${CSS.escape(p)}"]`)
      if (el) return el
    }
  }
  return null
}

/** Takes a field's error away, giving it back the description it had. */
function unmark(el) {
  el.removeAttribute('aria-invalid')
  const orig = /** @type {HTMLElement} */ (el).dataset.describedby
  if (orig) el.setAttribute('aria-describedby', orig)
  else el.removeAttribute('aria-describedby')
}

function clearErrors() {
  for (const el of form.querySelectorAll('.field-error')) el.remove()
  for (const el of form.querySelectorAll('[aria-invalid]')) unmark(el)
  $('form-error').hidden = true
  $('form-error').replaceChildren()
}

function markField(el, message) {
  const errId = `${el.id}-error`
  const existing = document.getElementById(errId)
  if (existing) {
    existing.textContent += `; ${message}`
    return
  }
  const p = h('p', { class: 'field-error', id: errId }, message)
  const field = el.closest('.field') ?? el.parentElement
  field.append(p)
  if (!el.hasAttribute('aria-invalid')) el.dataset.describedby = el.getAttribute('aria-describedby') ?? ''
  el.setAttribute('aria-invalid', 'true')
  el.setAttribute('aria-describedby', `${el.dataset.describedby} ${errId}`.trim())
  const details = el.closest('details')
  if (details) details.open = true
}

function showIssues(issues, fallback) {
  const unplaced = []
  let first = null
  for (const issue of issues) {
    const el = fieldFor(issue.path)
    if (el) {
      markField(el, issue.message)
      first ??= el
    } else unplaced.push(issue)
  }
  const box = $('form-error')
  box.replaceChildren(
    first ? 'Please correct the highlighted fields.' : (fallback ?? 'The job was not accepted.'),
  )
  if (unplaced.length)
    box.append(h('ul', {}, ...unplaced.map((i) => h('li', {}, h('code', {}, i.path), ` ${i.message}`))))
  box.hidden = false
  if (first) first.focus()
  else box.focus()
}

form.addEventListener('submit', async (e) => {
  e.preventDefault()
  clearErrors()
  const status = $('submit-status')
  const { body, problems } = readForm()
  if (problems.length) {
    showIssues(problems)
    status.textContent = ''
    return
  }
  const button = /** @type {HTMLButtonElement} */ ($('submit-button'))
  button.disabled = true
  status.textContent = 'Submitting…'
  try {
    const r = await request('/api/train', { method: 'POST', body })
    const id = r.json.jobId
    status.replaceChildren(
      r.status === 202 ? 'Queued ' : 'Already submitted: ',
      h('a', { href: `#job=${encodeURIComponent(id)}` }, shortId(id)),
      '.',
    )
    $('opt-jobId').value = ''
    const job = mergeJob(await api(jobPath(id)))
    const { order } = store.get()
    if (matchesFilters(job) && !order.includes(id)) store.update({ order: [id, ...order] })
    syncFollows()
  } catch (err) {
    status.textContent = ''
    if (err.issues?.length) showIssues(err.issues, err.message)
    else {
      const box = $('form-error')
      box.replaceChildren(`Not submitted: ${err.message}`)
      box.hidden = false
    }
  } finally {
    button.disabled = false
  }
})

typeSelect.addEventListener('change', showType)
form.addEventListener('input', (e) => {
  // Editing a field clears its error.
  const el = /** @type {HTMLElement} */ (e.target)
  if (el.getAttribute('aria-invalid') !== 'true') return
  document.getElementById(`${el.id}-error`)?.remove()
  unmark(el)
})
