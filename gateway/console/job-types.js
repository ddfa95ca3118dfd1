// The job types the console offers, as the gateway documents them in /openapi.json: the submit body
// (`SubmitJobBody`) is one member per type, found through its discriminator's mapping, and each member's
// `params` refers to that type's params JSON Schema (generated from the one job catalog,
// schema/params/catalog.ts, with the type's title, description and form id), fetched once at start. The
// console keeps no list of its own.

import { request } from './api.js'
import { h } from './dom.js'
import { backoffDelay } from './stream.js'

/** @typedef {{type: string, title: string, description?: string, formId: string, schema: any}} JobType */

/** The job types of an OpenAPI document, in its order. @returns {JobType[]} */
export function jobTypesOf(doc) {
  const schemas = doc?.components?.schemas ?? {}
  // A local reference, `#/components/schemas/<name>`: the schema it names.
  const resolve = (ref) => schemas[String(ref).split('/').pop()]
  return Object.entries(schemas.SubmitJobBody?.discriminator?.mapping ?? {}).flatMap(([type, ref]) => {
    const schema = resolve(resolve(ref)?.properties?.params?.$ref)
    if (!schema) return []
    const { title = type, description, 'x-form': form } = schema
    return [{ type, title, description, formId: form?.id ?? type, schema }]
  })
}

/** @type {Promise<JobType[]> | null} */
let loaded = null

/**
 * The job types, from /openapi.json, fetched once for every view that asks; while the gateway cannot
 * answer (it is starting, or restarting), asked again after a growing delay, so they come once it can.
 * @returns {Promise<JobType[]>}
 */
export const loadJobTypes = () => {
  loaded ??= fetchJobTypes()
  return loaded
}

async function fetchJobTypes() {
  for (let failures = 0; ; failures++) {
    try {
      return jobTypesOf((await request('/openapi.json')).json)
    } catch {
      await new Promise((r) => setTimeout(r, backoffDelay(failures)))
    }
  }
}

/** `<option>`s of the types: `train_lora: LoRA training`, or the bare names (a filter). */
export const typeOptions = (types, { described = true } = {}) =>
  types.map((t) =>
    described ? h('option', { value: t.type }, `${t.type}: ${t.title}`) : h('option', {}, t.type),
  )
