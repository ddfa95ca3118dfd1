/**
 * `npm run schema:json`: writes JSON Schema files of the contracts for producers and consumers in other
 * languages (schema/json/*.schema.json). CI fails when they differ from the valibot schemas.
 */
import { mkdir, writeFile } from 'node:fs/promises'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { toJsonSchema } from '@valibot/to-json-schema'
import type * as v from 'valibot'
import { JobStatusBody, SubmitJobBody } from './api.ts'
import { isUsableJobId, RESERVED_JOB_ID } from './common.ts'
import { JobEnvelope } from './envelope.ts'
import { ProgressEvent } from './events.ts'
import { PARAMS_BY_TYPE } from './params/index.ts'

const outDir = path.join(path.dirname(fileURLToPath(import.meta.url)), 'json')

const schemas: Record<string, v.GenericSchema> = {
  'job-envelope': JobEnvelope,
  'progress-event': ProgressEvent,
  'submit-job-body': SubmitJobBody,
  'job-status-body': JobStatusBody,
  ...Object.fromEntries(Object.entries(PARAMS_BY_TYPE).map(([type, schema]) => [`params.${type}`, schema])),
}

/** The JSON Schema documents, by file stem. */
export function jsonSchemas(): Record<string, unknown> {
  return Object.fromEntries(
    Object.entries(schemas).map(([name, schema]) => [
      name,
      {
        $id: `https://gpu-jobs.local/schema/${name}.schema.json`,
        ...toJsonSchema(schema, {
          errorMode: 'ignore',
          // Checks have no JSON Schema form of their own; this one has an exact one.
          overrideAction: ({ valibotAction, jsonSchema }) =>
            valibotAction.type === 'check' &&
            (valibotAction as v.CheckAction<string, undefined>).requirement === isUsableJobId
              ? { ...jsonSchema, not: { pattern: RESERVED_JOB_ID.source } }
              : undefined,
        }),
      },
    ]),
  )
}

if (process.argv[1] && fileURLToPath(import.meta.url) === path.resolve(process.argv[1])) {
  await mkdir(outDir, { recursive: true })
  for (const [name, doc] of Object.entries(jsonSchemas()))
    await writeFile(path.join(outDir, `${name}.schema.json`), `${JSON.stringify(doc, null, 2)}\n`)
  process.stdout.write(
    `wrote ${Object.keys(schemas).length} JSON Schema files to ${path.relative(process.cwd(), outDir)}/\n`,
  )
}
