// The job types the console offers, and the form of each one's parameters: one entry per type (its
// fields, their defaults and hints), from which the page builds the type selects and the fieldsets.
// Field names are the API's (`params.<path>`); defaults are the handlers' own, shown to edit.

import { h } from './dom.js'

const DATASET = {
  name: 'datasetPath',
  label: 'Dataset path',
  value: 'demo',
  required: true,
  hint: "Relative to the gateway's DATA_DIR.",
}
const EPOCHS = { name: 'epochs', label: 'Epochs', number: { min: 1, max: 1000, step: 1 }, value: '10' }
const whole = (name, label, min, max, value, step = 1) => ({
  name,
  label,
  number: { min, max, step },
  value: String(value),
})
const engine = (...engines) => ({ name: 'engine', label: 'Engine', options: engines })

/**
 * A field: `name` (under params.), `label`, `id` (after the type's prefix; default the name), `value`,
 * `required`, `placeholder`, `hint`, `spellcheck`; `number: {min, max, step, inputmode}` for a number,
 * `rows` for a textarea (`kind` tags it for the form reader), `options` for a select; an array is a row
 * of fields side by side.
 */
export const JOB_TYPES = [
  {
    type: 'train_lora',
    summary: 'LoRA training',
    prefix: 'lora',
    fields: [
      { name: 'baseModel', label: 'Base model', value: 'sd15', required: true },
      DATASET,
      [EPOCHS, whole('rank', 'Rank', 1, 1024, 16)],
      [
        {
          name: 'learningRate',
          label: 'Learning rate',
          number: { min: 0, max: 1, step: 'any', inputmode: 'decimal' },
          value: '0.0001',
        },
        whole('resolution', 'Resolution', 64, 4096, 512),
      ],
      engine('simulate', 'kohya'),
    ],
  },
  {
    type: 'train_voice',
    summary: 'voice cloning',
    prefix: 'voice',
    fields: [
      { name: 'speakerName', label: 'Speaker name', placeholder: 'ann', required: true },
      DATASET,
      [EPOCHS, { name: 'language', label: 'Language', value: 'en', spellcheck: 'false' }],
      engine('simulate', 'f5tts'),
    ],
  },
  {
    type: 'render_video',
    summary: 'video rendering',
    prefix: 'video',
    fields: [
      {
        name: 'workflow',
        label: 'Workflow',
        rows: 1,
        kind: 'workflow',
        spellcheck: 'false',
        value: 'default',
        hint: 'A template name, or an inline ComfyUI API-format graph (JSON).',
      },
      { name: 'inputs.prompt', id: 'prompt', label: 'Prompt', rows: 2, placeholder: 'a red fox in the snow' },
      { name: 'inputs.seed', id: 'seed', label: 'Seed', optional: true, number: { step: 1 } },
      [whole('width', 'Width', 16, 4096, 512, 8), whole('height', 'Height', 16, 4096, 512, 8)],
      [whole('frames', 'Frames', 1, 2000, 24), whole('fps', 'FPS', 1, 120, 8)],
      engine('simulate', 'comfyui'),
    ],
  },
]

/** `<option>`s of the types: `train_lora: LoRA training`, or the bare names (a filter). */
export const typeOptions = ({ described = true } = {}) =>
  JOB_TYPES.map((t) =>
    described ? h('option', { value: t.type }, `${t.type}: ${t.summary}`) : h('option', {}, t.type),
  )

function control(f, id) {
  const hint = f.hint ? `${id}-hint` : undefined
  const common = { id, name: `params.${f.name}`, 'aria-describedby': hint }
  if (f.options) return h('select', common, ...f.options.map((value) => h('option', { value }, value)))
  if (f.rows)
    return h(
      'textarea',
      {
        ...common,
        rows: String(f.rows),
        spellcheck: f.spellcheck,
        'data-kind': f.kind,
        placeholder: f.placeholder,
      },
      f.value ?? '',
    )
  const n = f.number
  return h('input', {
    ...common,
    type: n ? 'number' : 'text',
    inputmode: n ? (n.inputmode ?? 'numeric') : undefined,
    min: n?.min === undefined ? undefined : String(n.min),
    max: n?.max === undefined ? undefined : String(n.max),
    step: n?.step === undefined ? undefined : String(n.step),
    value: f.value,
    placeholder: f.placeholder,
    spellcheck: f.spellcheck,
    required: f.required ? '' : undefined,
  })
}

function field(f, prefix) {
  const id = `${prefix}-${f.id ?? f.name}`
  const label = h('label', { for: id }, f.label)
  if (f.optional) label.append(' ', h('span', { class: 'optional' }, '(optional)'))
  return h(
    'div',
    { class: 'field' },
    label,
    control(f, id),
    f.hint ? h('p', { class: 'hint', id: `${id}-hint` }, f.hint) : undefined,
  )
}

/** The fieldset of a type's parameters (`data-type` says which), hidden and disabled until chosen. */
export function fieldsetFor(t) {
  const title = t.summary[0].toUpperCase() + t.summary.slice(1)
  return h(
    'fieldset',
    { 'data-type': t.type, hidden: '', disabled: '' },
    h('legend', {}, title),
    ...t.fields.map((f) =>
      Array.isArray(f) ? h('div', { class: 'row' }, ...f.map((g) => field(g, t.prefix))) : field(f, t.prefix),
    ),
  )
}
