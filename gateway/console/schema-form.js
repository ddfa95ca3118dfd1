// A job type's form, built from its params JSON Schema (the catalog's, as /openapi.json serves it): one
// field per property, in the schema's order. A property's `title` is its label (else its name, in words),
// `description` its hint, `default` (else its first `examples`) its value; numbers get their range and
// step, booleans a checkbox, enums a select, a property that may be an object a text area read as JSON
// when it starts with `{`, and an object with `properties` its fields inline (`params.inputs.seed`). The
// `x-form` key adds what a schema cannot say: `rows`, `half` (numbers take half a row unless it is
// false), `placeholder`.

import { h } from './dom.js'

/** `learningRate` -> `Learning rate`: the label of a property with no title. */
const words = (name) => {
  const text = name.replace(/([a-z0-9])([A-Z])/g, '$1 $2').toLowerCase()
  return text[0].toUpperCase() + text.slice(1)
}

const isNumber = (s) => s.type === 'integer' || s.type === 'number'
/** Whether a value of the property may be a JSON object (a workflow graph), beside text. */
const takesJson = (s) => (s.anyOf ?? []).some((o) => o.type === 'object')
/** A text with a pattern is a code (a language tag, a template name), not prose to spell-check. */
const isCode = (s) => s.pattern !== undefined || (s.anyOf ?? []).some((o) => o.pattern !== undefined)

/**
 * The fields of an object schema, flattened: `{name, id, schema, required}` with `name` the path under
 * params (`inputs.seed`) and `id` the last key, unless an earlier field has it.
 */
export function fieldsOf(schema, path = [], ids = new Set()) {
  return Object.entries(schema.properties ?? {}).flatMap(([key, s]) => {
    if (s.type === 'object' && s.properties) return fieldsOf(s, [...path, key], ids)
    const id = ids.has(key) ? [...path, key].join('-') : key
    ids.add(id)
    return [{ name: [...path, key].join('.'), id, schema: s, required: schema.required?.includes(key) }]
  })
}

function control(f, id, hint) {
  const s = f.schema
  const hints = s['x-form'] ?? {}
  const value = s.default ?? s.examples?.[0]
  const text =
    value === undefined ? undefined : typeof value === 'object' ? JSON.stringify(value) : String(value)
  const common = { id, name: `params.${f.name}`, 'aria-describedby': hint }
  if (s.type === 'boolean')
    return h('input', { ...common, type: 'checkbox', checked: value ? '' : undefined })
  if (s.enum) {
    const options = s.enum.map((o) => h('option', { value: o, selected: o === value ? '' : undefined }, o))
    return h('select', common, ...options)
  }
  const spellcheck = takesJson(s) || isCode(s) ? 'false' : undefined
  if (hints.rows)
    return h(
      'textarea',
      {
        ...common,
        rows: String(hints.rows),
        spellcheck,
        'data-kind': takesJson(s) ? 'json' : undefined,
        placeholder: hints.placeholder,
      },
      text ?? '',
    )
  const number = isNumber(s)
  const integer = s.type === 'integer'
  const min = s.minimum ?? s.exclusiveMinimum
  const max = s.maximum ?? s.exclusiveMaximum
  return h('input', {
    ...common,
    type: number ? 'number' : 'text',
    inputmode: number ? (integer ? 'numeric' : 'decimal') : undefined,
    min: number && min !== undefined ? String(min) : undefined,
    max: number && max !== undefined ? String(max) : undefined,
    step: number ? String(s.multipleOf ?? (integer ? 1 : 'any')) : undefined,
    value: text,
    placeholder: hints.placeholder,
    spellcheck,
    required: f.required ? '' : undefined,
  })
}

function field(f, prefix) {
  const id = `${prefix}-${f.id}`
  const s = f.schema
  const hint = s.description ? `${id}-hint` : undefined
  const label = h('label', { for: id }, s.title ?? words(f.id))
  if (!f.required && s.default === undefined)
    label.append(' ', h('span', { class: 'optional' }, '(optional)'))
  return h(
    'div',
    { class: 'field' },
    label,
    control(f, id, hint),
    hint ? h('p', { class: 'hint', id: hint }, s.description) : undefined,
  )
}

const isHalf = (s) => s['x-form']?.half ?? (isNumber(s) && !s.enum)

/** The fields' elements, two half-width fields in a row (`.row`) side by side. */
function layout(fields, prefix) {
  const out = []
  for (let i = 0; i < fields.length; i++) {
    const f = fields[i]
    const next = fields[i + 1]
    if (next && isHalf(f.schema) && isHalf(next.schema) && parent(f) === parent(next)) {
      out.push(h('div', { class: 'row' }, field(f, prefix), field(next, prefix)))
      i++
    } else out.push(field(f, prefix))
  }
  return out
}
const parent = (f) => f.name.slice(0, f.name.lastIndexOf('.') + 1)

/**
 * The fieldset of a type's parameters (`data-type` says which), hidden and disabled until chosen.
 * `t` is a job type of job-types.js: `{type, title, description, formId, schema}`.
 */
export function fieldsetFor(t) {
  return h(
    'fieldset',
    { 'data-type': t.type, hidden: '', disabled: '' },
    h('legend', {}, t.title),
    t.description ? h('p', { class: 'hint' }, t.description) : undefined,
    ...layout(fieldsOf(t.schema), t.formId),
  )
}
