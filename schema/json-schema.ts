/**
 * The JSON Schema form of the contracts, in one place: `jsonSchemaOf` is the one conversion (the OpenAPI
 * document's components use it too), `paramsJsonSchema` a job type's params with what the catalog says of
 * the type. `npm run schema:json` writes the documents for producers and consumers in other languages
 * (schema/json/*.schema.json); CI fails when they differ from the valibot schemas.
 */
import { mkdir, writeFile } from 'node:fs/promises'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { type ConversionConfig, toJsonSchema } from '@valibot/to-json-schema'
import type * as v from 'valibot'
import { JobStatusBody, SubmitJobBody } from './api.ts'
import { isUsableJobId, RESERVED_JOB_ID } from './common.ts'
import { JobEnvelope } from './envelope.ts'
import { ProgressEvent } from './events.ts'
import { JOB_CATALOG, JOB_TYPES, type JobType } from './params/index.ts'

const outDir = path.join(path.dirname(fileURLToPath(import.meta.url)), 'json')

const conversion: ConversionConfig = {
  errorMode: 'ignore',
  overrideAction: ({ valibotAction, jsonSchema }) => {
    // Checks have no JSON Schema form of their own; this one has an exact one.
    if (
      valibotAction.type === 'check' &&
      (valibotAction as v.CheckAction<string, undefined>).requirement === isUsableJobId
    )
      return { ...jsonSchema, not: { pattern: RESERVED_JOB_ID.source } }
    // A record's `properties` metadata is a schema of the keys it knows (render_video's inputs).
    const known =
      valibotAction.type === 'metadata'
        ? (valibotAction as v.MetadataAction<unknown, Record<string, unknown>>).metadata.properties
        : undefined
    if (isSchema(known)) return { ...jsonSchema, properties: toJsonSchema(known, conversion).properties }
    return undefined
  },
}

/** A valibot schema as JSON Schema (draft-07, with its `$schema`). */
export const jsonSchemaOf = (schema: v.GenericSchema): Record<string, unknown> =>
  toJsonSchema(schema, conversion) as Record<string, unknown>

const isSchema = (x: unknown): x is v.GenericSchema =>
  typeof x === 'object' && x !== null && (x as { kind?: unknown }).kind === 'schema'

/**
 * A job type's params as JSON Schema, titled and described by its catalog entry; `x-form.id` is the prefix
 * of its console form's element ids. The web console builds its forms from these (in /openapi.json):
 * labels from `title` (else the name), hints from `description`, values from `default` (else `examples`),
 * ranges, enums as selects, and the fields' own `x-form` hints (schema/params/shared.ts).
 */
export function paramsJsonSchema(type: JobType): Record<string, unknown> {
  const { title, description, formId, params } = JOB_CATALOG[type]
  return { title, description, 'x-form': { id: formId ?? type }, ...jsonSchemaOf(params) }
}

/** The JSON Schema documents, by file stem. */
export function jsonSchemas(): Record<string, unknown> {
  const contracts: Record<string, Record<string, unknown>> = {
    'job-envelope': jsonSchemaOf(JobEnvelope),
    'progress-event': jsonSchemaOf(ProgressEvent),
    'submit-job-body': jsonSchemaOf(SubmitJobBody),
    'job-status-body': jsonSchemaOf(JobStatusBody),
    ...Object.fromEntries(JOB_TYPES.map((type) => [`params.${type}`, paramsJsonSchema(type)])),
  }
  return Object.fromEntries(
    Object.entries(contracts).map(([name, doc]) => [
      name,
      { $id: `https://gpu-jobs.local/schema/${name}.schema.json`, ...doc },
    ]),
  )
}

/** Writes schema/json/*.schema.json. */
async function writeJsonSchemas(): Promise<void> {
  await mkdir(outDir, { recursive: true })
  const docs = jsonSchemas()
  for (const [name, doc] of Object.entries(docs))
    await writeFile(path.join(outDir, `${name}.schema.json`), `${JSON.stringify(doc, null, 2)}\n`)
  process.stdout.write(
    `wrote ${Object.keys(docs).length} JSON Schema files to ${path.relative(process.cwd(), outDir)}/\n`,
  )
}

// Run as `npm run schema:json`. No top-level await: the gateway imports this module (openapi.ts), and a
// module with one cannot be require()d.
if (process.argv[1] && fileURLToPath(import.meta.url) === path.resolve(process.argv[1]))
  writeJsonSchemas().catch((err: unknown) => {
    process.stderr.write(`schema:json: ${err instanceof Error ? err.message : String(err)}\n`)
    process.exitCode = 1
  })
