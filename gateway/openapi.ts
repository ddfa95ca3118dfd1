import * as v from 'valibot'
import {
  Artifact,
  ErrorBody,
  JobListBody,
  JobLogLine,
  JobLogsBody,
  JobMetricsBody,
  JobStatusBody,
  MAX_BATCH_JOBS,
  RetryJobResponse,
  SubmitJobBody,
  SubmitJobResponse,
} from '../schema/api.ts'
import { JOB_STATUSES, SHORT_ID_LENGTH } from '../schema/common.ts'
import { ProgressEvent } from '../schema/events.ts'
import { HostsBody } from '../schema/hosts.ts'
import { jsonSchemaOf, paramsJsonSchema } from '../schema/json-schema.ts'
import { JOB_TYPES, type JobType, PARAMS_BY_TYPE } from '../schema/params/index.ts'
import { QueueBody } from '../schema/queue.ts'

/**
 * `anyOf` with a member that matches anything (`v.nullable(v.unknown())` gives `[{}, {type: null}]`)
 * matches anything: said as `{}`, which linters take as meant.
 */
const withoutVacuousAnyOf = (node: unknown): unknown => {
  if (Array.isArray(node)) return node.map(withoutVacuousAnyOf)
  if (typeof node !== 'object' || node === null) return node
  const out = Object.fromEntries(Object.entries(node).map(([k, x]) => [k, withoutVacuousAnyOf(x)]))
  const anyOf = out.anyOf
  const matchesAll = (m: unknown) => typeof m === 'object' && m !== null && Object.keys(m).length === 0
  if (Array.isArray(anyOf) && anyOf.some(matchesAll)) delete out.anyOf
  return out
}
/** A component: its JSON Schema without `$schema` (OpenAPI 3.1 components are JSON Schema 2020-12). */
const component = (jsonSchema: Record<string, unknown>) => {
  const { $schema: _drop, ...rest } = withoutVacuousAnyOf(jsonSchema) as Record<string, unknown>
  return rest
}
const schema = (s: v.GenericSchema) => component(jsonSchemaOf(s))
const ref = (name: string) => ({ $ref: `#/components/schemas/${name}` })

/** `train_lora` -> `TrainLora`: a job type's part of its component names. */
const pascalCase = (type: string) =>
  type
    .split('_')
    .map((word) => word.charAt(0).toUpperCase() + word.slice(1))
    .join('')
/** The component of a job type's submit body: `TrainLoraSubmit`. */
export const submitComponent = (type: JobType): string => `${pascalCase(type)}Submit`
/** The component of a job type's params: `TrainLoraParams`. */
export const paramsComponent = (type: JobType): string => `${pascalCase(type)}Params`

/**
 * A job type's submit body: the validator's checks in one schema, the body's (SubmitJobBody) with `type`
 * fixed and `params` the type's own, referred to by its component (which the console's forms read).
 */
function submitSchema(type: JobType): Record<string, unknown> {
  const body = schema(
    v.strictObject({ ...SubmitJobBody.entries, type: v.literal(type), params: PARAMS_BY_TYPE[type] }),
  )
  const properties = body.properties as Record<string, unknown>
  return {
    title: `Submit a ${type} job`,
    ...body,
    // `const` alone is enough for a validator; the `type` lets generators name the field a string.
    properties: { ...properties, type: { type: 'string', const: type }, params: ref(paramsComponent(type)) },
  }
}

/**
 * SubmitJobBody: one member per job type, told apart by `type`, so that a generated client types each
 * type's params (the API checks the same: unknown keys are refused).
 */
const submitUnion = () => ({
  description: "A job of one type, with that type's params.",
  oneOf: JOB_TYPES.map((t) => ref(submitComponent(t))),
  discriminator: {
    propertyName: 'type',
    mapping: Object.fromEntries(JOB_TYPES.map((t) => [t, ref(submitComponent(t)).$ref])),
  },
})

const ERROR_DESCRIPTIONS: Record<number, string> = {
  400: 'invalid input: which field and why',
  401: 'no or bad token',
  403: 'cross-site request (foreign Origin or Host; see ALLOWED_ORIGINS)',
  404: 'unknown job (or another owner’s)',
  409: 'conflict (a submit: the jobId exists with a different request; a retry: the job is not retrying; a re-run: its stored params no longer pass; ambiguous_job_id: the short id given starts several of your jobs’ ids)',
  413: 'body over 1 MB, or params over MAX_PARAMS_BYTES',
  415: 'body is not JSON (content-type: application/json)',
  416: 'Range malformed or past the end of the file (content-range: bytes */<size>)',
  429: 'rate limited (see Retry-After), or over MAX_QUEUED_JOBS_PER_TOKEN (quota_exceeded)',
  503: 'backend_unavailable: Redis, Postgres or S3 (named) is down; for a submit, nothing was queued',
}
const json = (name: string, description: string) => ({
  description,
  content: { 'application/json': { schema: ref(name) } },
})
const errors = (...codes: number[]) =>
  Object.fromEntries(codes.map((c) => [String(c), json('ErrorBody', ERROR_DESCRIPTIONS[c] ?? 'error')]))
/**
 * The one refusal of a route that needs no token: every request that presents one passes the wrong-token
 * throttle first (per client address).
 */
const throttled = {
  '429': json(
    'ErrorBody',
    'this address sent too many wrong tokens and presents one again (see Retry-After)',
  ),
}
const jobIdParam = {
  name: 'jobId',
  in: 'path',
  required: true,
  description: `The job's id (1 to 128 of A-Z a-z 0-9 _ . -), or the start of it, at least ${SHORT_ID_LENGTH} characters (the short id the console and the CLI show), when no job has that whole id: the one of your jobs whose id starts so (several: 409 ambiguous_job_id naming them).`,
  schema: { type: 'string', pattern: '^[A-Za-z0-9_.-]{1,128}$' },
}
/** The routes of a stream, where browsers (EventSource, WebSocket) may send the token as `?token=`. */
const streamSecurity = [{ bearer: [] }, { queryToken: [] }]
/** The routes anyone may call. */
const open: never[] = []

/**
 * The OpenAPI 3.1 document of the gateway (`GET /openapi.json`), generated from the valibot schemas in
 * schema/ and the job catalog; `npx redocly lint` passes it under the recommended rules (redocly.yaml).
 */
export function openApiDocument(): Record<string, unknown> {
  const submit = {
    tags: ['jobs'],
    summary: 'Submit a job',
    description: `The body is one of ${JOB_TYPES.map(submitComponent).join(', ')}, by \`type\`; params are checked against that type's schema and unknown keys are refused. The same jobId twice is one job.`,
    requestBody: { required: true, content: { 'application/json': { schema: ref('SubmitJobBody') } } },
    responses: {
      '202': json('SubmitJobResponse', 'queued'),
      '200': json('SubmitJobResponse', 'a job with this jobId exists already'),
      ...errors(400, 401, 403, 409, 413, 415, 429, 503),
    },
  }
  const status = {
    tags: ['jobs'],
    summary: 'A job: its stored state merged with its latest live progress',
    parameters: [jobIdParam],
    responses: { '200': json('JobStatusBody', 'the job'), ...errors(401, 403, 404, 409, 429, 503) },
  }
  return {
    openapi: '3.1.0',
    info: {
      title: 'GPU jobs gateway',
      version: '0.1.0',
      description:
        'Submit GPU jobs, follow their progress, download their artifacts. With API_TOKENS set every route but the probes, /metrics and this document needs a bearer token, and a token sees only its own jobs; without, the gateway listens on loopback only. On every route: a method the route does not take is a 405 method_not_allowed with an Allow header, and a query parameter the route reads given twice a 400 invalid_query naming it.',
      // The package is private (package.json): no licence is granted.
      license: { name: 'Proprietary', identifier: 'LicenseRef-Proprietary' },
    },
    servers: [{ url: '/', description: 'the gateway that serves this document' }],
    tags: [
      { name: 'jobs', description: 'Submit, list, inspect, cancel, re-run and retry jobs' },
      { name: 'artifacts', description: "A job's output files" },
      { name: 'streams', description: "A job's live progress and logs (Server-Sent Events, WebSocket)" },
      { name: 'fleet', description: 'The GPU hosts and the queue' },
      { name: 'operations', description: 'Probes, metrics and this document' },
    ],
    components: {
      securitySchemes: {
        bearer: {
          type: 'http',
          scheme: 'bearer',
          description: 'One of API_TOKENS, when it is set (with none set, no token is asked for)',
        },
        queryToken: {
          type: 'apiKey',
          in: 'query',
          name: 'token',
          description:
            'The bearer token as ?token=, for browsers: only on the WebSocket and the event streams',
        },
        metricsBearer: {
          type: 'http',
          scheme: 'bearer',
          description: 'METRICS_TOKEN, when it is set (with none set, /metrics is open)',
        },
      },
      schemas: {
        SubmitJobBody: submitUnion(),
        ...Object.fromEntries(JOB_TYPES.map((t) => [submitComponent(t), submitSchema(t)])),
        // The console builds its job forms from these (gateway/console/job-types.js).
        ...Object.fromEntries(JOB_TYPES.map((t) => [paramsComponent(t), component(paramsJsonSchema(t))])),
        SubmitJobResponse: schema(SubmitJobResponse),
        // By reference: each item is a SubmitJobBody, whatever shape that takes.
        SubmitBatchBody: {
          type: 'object',
          properties: {
            jobs: { type: 'array', items: ref('SubmitJobBody'), minItems: 1, maxItems: MAX_BATCH_JOBS },
          },
          required: ['jobs'],
          additionalProperties: false,
        },
        SubmitBatchResponse: {
          type: 'object',
          properties: { jobs: { type: 'array', items: ref('SubmitJobResponse') } },
          required: ['jobs'],
        },
        JobStatusBody: schema(JobStatusBody),
        JobListBody: schema(JobListBody),
        RetryJobResponse: schema(RetryJobResponse),
        Artifact: schema(Artifact),
        JobLogsBody: schema(JobLogsBody),
        JobLogLine: schema(JobLogLine),
        JobMetricsBody: schema(JobMetricsBody),
        ErrorBody: schema(ErrorBody),
        ProgressEvent: schema(ProgressEvent),
        HostsBody: schema(HostsBody),
        QueueBody: schema(QueueBody),
      },
    },
    security: [{ bearer: [] }],
    paths: {
      '/api/train': { post: { ...submit, operationId: 'submitJob' } },
      '/api/jobs': {
        post: { ...submit, operationId: 'submitJobAlias', summary: 'Submit a job (alias of /api/train)' },
        get: {
          operationId: 'listJobs',
          tags: ['jobs'],
          summary:
            'List jobs, newest first: summaries (no params, result or artifacts; see the status route)',
          parameters: [
            {
              name: 'status',
              in: 'query',
              description: 'only jobs in this status',
              schema: { type: 'string', enum: [...JOB_STATUSES] },
            },
            {
              name: 'type',
              in: 'query',
              description: 'only jobs of this type',
              schema: { type: 'string', enum: [...JOB_TYPES] },
            },
            {
              name: 'limit',
              in: 'query',
              description: 'jobs per page',
              schema: { type: 'integer', minimum: 1, maximum: 500, default: 50 },
            },
            {
              name: 'cursor',
              in: 'query',
              description: 'the previous page’s nextCursor',
              schema: { type: 'string' },
            },
            {
              name: 'q',
              in: 'query',
              description:
                'search: jobs whose id starts with it (as typed) or whose message contains it (any case); % and _ are literal',
              schema: { type: 'string', maxLength: 200 },
            },
          ],
          responses: { '200': json('JobListBody', 'a page of jobs'), ...errors(400, 401, 403, 429, 503) },
        },
      },
      '/api/jobs/batch': {
        post: {
          operationId: 'submitJobs',
          tags: ['jobs'],
          summary: `Submit 1 to ${MAX_BATCH_JOBS} jobs at once, all or none`,
          description:
            'Each item is checked like a single submit (errors name jobs[3].params.epochs); the quota counts the whole batch; a jobId resubmitted with the same request answers with its status; a conflict, the quota or a backend down refuses the whole batch and nothing is queued.',
          requestBody: {
            required: true,
            content: { 'application/json': { schema: ref('SubmitBatchBody') } },
          },
          responses: {
            '202': json('SubmitBatchResponse', 'queued: one answer per item, in order'),
            '200': json('SubmitBatchResponse', 'every jobId existed already with the same request'),
            ...errors(400, 401, 403, 409, 413, 415, 429, 503),
          },
        },
      },
      '/api/status/{jobId}': { get: { ...status, operationId: 'getJobStatus' } },
      '/api/jobs/{jobId}': {
        get: { ...status, operationId: 'getJob', summary: `${status.summary} (alias of /api/status)` },
      },
      '/api/jobs/{jobId}/cancel': {
        post: {
          operationId: 'cancelJob',
          tags: ['jobs'],
          summary: 'Cancel a queued, retrying or running job (the running process group is killed)',
          parameters: [jobIdParam],
          responses: {
            '202': { description: 'cancelled, or cancellation sent to the host running it' },
            ...errors(401, 403, 404, 409, 429, 503),
          },
        },
      },
      '/api/jobs/{jobId}/rerun': {
        post: {
          operationId: 'rerunJob',
          tags: ['jobs'],
          summary:
            'Run a job again: a new job (new id) with its type, params as stored and options (priority, timeoutSec, maxAttempts, gpu)',
          parameters: [jobIdParam],
          responses: {
            '202': json('SubmitJobResponse', 'the new job, queued'),
            ...errors(401, 403, 404, 409, 429, 503),
          },
        },
      },
      '/api/jobs/{jobId}/retry': {
        post: {
          operationId: 'retryJob',
          tags: ['jobs'],
          summary: "Start a retrying job's next attempt now, before its backoff ends",
          parameters: [jobIdParam],
          responses: {
            '202': json('RetryJobResponse', 'the next attempt is due now'),
            ...errors(401, 403, 404, 409, 429, 503),
          },
        },
      },
      '/api/jobs/{jobId}/artifacts': {
        get: {
          operationId: 'listArtifacts',
          tags: ['artifacts'],
          summary: "A job's artifacts",
          parameters: [jobIdParam],
          responses: {
            '200': {
              description: 'the artifacts',
              content: {
                'application/json': {
                  schema: {
                    type: 'object',
                    properties: { artifacts: { type: 'array', items: ref('Artifact') } },
                    required: ['artifacts'],
                  },
                },
              },
            },
            ...errors(401, 403, 404, 409, 429),
          },
        },
      },
      '/api/jobs/{jobId}/artifacts/{path}': {
        get: {
          operationId: 'downloadArtifact',
          tags: ['artifacts'],
          summary: 'Download an artifact (Range requests work)',
          parameters: [
            jobIdParam,
            {
              name: 'path',
              in: 'path',
              required: true,
              description: "the artifact's path, relative to the job's prefix",
              schema: { type: 'string' },
            },
            {
              name: 'Range',
              in: 'header',
              description: 'one byte range (bytes=0-1023) for a 206',
              schema: { type: 'string' },
            },
          ],
          responses: {
            '200': { description: 'the file (also for several ranges, or a unit other than bytes)' },
            '206': { description: 'one byte range of the file' },
            ...errors(400, 401, 403, 404, 409, 416, 429, 503),
          },
        },
      },
      '/api/jobs/{jobId}/events': {
        get: {
          operationId: 'jobEvents',
          tags: ['streams'],
          summary:
            'Server-Sent Events: every event after Last-Event-ID (or ?after=), then live; the current state first otherwise',
          security: streamSecurity,
          parameters: [
            jobIdParam,
            {
              name: 'after',
              in: 'query',
              description: 'replay every event after this seq',
              schema: { type: 'integer', minimum: 0, maximum: Number.MAX_SAFE_INTEGER },
            },
            {
              name: 'Last-Event-ID',
              in: 'header',
              description: 'the seq of the last event seen (EventSource sends it on reconnect)',
              schema: { type: 'string' },
            },
          ],
          responses: {
            '200': {
              description: 'event stream of ProgressEvent (event: progress, id: seq)',
              content: { 'text/event-stream': { schema: ref('ProgressEvent') } },
            },
            ...errors(400, 401, 403, 404, 409, 429),
          },
        },
      },
      '/api/hosts': {
        get: {
          operationId: 'listHosts',
          tags: ['fleet'],
          summary:
            'Every GPU host that heartbeats: slots, GPUs (VRAM used/reserved/total), engines, running jobs; `gone` after 3 missed beats until its key expires',
          description:
            'With API tokens every token sees every host, and a running job only when it owns the job: another token’s is left out of `jobs` (its slot says busy).',
          responses: { '200': json('HostsBody', 'the hosts, by id'), ...errors(401, 403, 429, 503) },
        },
      },
      '/api/queue': {
        get: {
          operationId: 'queueOverview',
          tags: ['fleet'],
          summary:
            'Queue depth: BullMQ counts by state, unfinished jobs by type, the oldest waiting job’s age, completed/failed in the last hour',
          description:
            'With API tokens `byType` and `lastHour` count the caller’s own jobs; `byState` and `oldestWaitingSec` are the fleet’s.',
          responses: { '200': json('QueueBody', 'the overview'), ...errors(401, 403, 429, 503) },
        },
      },
      '/api/jobs/{jobId}/logs': {
        get: {
          operationId: 'jobLogs',
          tags: ['streams'],
          summary:
            "What a job's process printed (stdout, stderr, ctx.log) in one attempt; with follow=1, Server-Sent Events until the attempt ends",
          description:
            'Each attempt keeps 2,000 lines and 1 MB at most (a line over 4 kB is cut); the rest are counted in `dropped`. An attempt the job has not made and never will (past maxAttempts, or past its last once it has finished) is a 404. With follow=1: `event: attempt` ({attempt}), then `event: log` per JobLogLine (id: its seq; resume with Last-Event-ID or ?after=), then `event: end` ({attempt, dropped}). `?token=` is taken with follow=1 only.',
          security: streamSecurity,
          parameters: [
            jobIdParam,
            {
              name: 'attempt',
              in: 'query',
              description: 'the attempt (default: the latest)',
              schema: { type: 'integer', minimum: 1 },
            },
            {
              name: 'follow',
              in: 'query',
              description:
                'stream the lines as Server-Sent Events until the attempt ends (1 or true; 0 or false: do not)',
              schema: { type: 'string', enum: ['1', 'true', '0', 'false'] },
            },
            {
              name: 'after',
              in: 'query',
              description: 'with follow=1: only lines after this seq',
              schema: { type: 'integer', minimum: 0 },
            },
            {
              name: 'Last-Event-ID',
              in: 'header',
              description: 'with follow=1: the seq of the last line seen',
              schema: { type: 'string' },
            },
          ],
          responses: {
            '200': {
              description: 'the lines (JobLogsBody), or with follow=1 an event stream of JobLogLine',
              content: {
                'application/json': { schema: ref('JobLogsBody') },
                'text/event-stream': { schema: ref('JobLogLine') },
              },
            },
            ...errors(400, 401, 403, 404, 409, 429, 503),
          },
        },
      },
      '/api/jobs/{jobId}/metrics': {
        get: {
          operationId: 'jobMetrics',
          tags: ['jobs'],
          summary:
            'The numbers a job reported with its progress (e.g. loss), one point per event, in seq order (at most 20,000)',
          parameters: [jobIdParam],
          responses: {
            '200': json('JobMetricsBody', 'the points'),
            ...errors(401, 403, 404, 409, 429, 503),
          },
        },
      },
      '/ws': {
        get: {
          operationId: 'websocket',
          tags: ['streams'],
          summary: 'WebSocket: follow any number of jobs over one socket',
          description:
            'Send `{"op":"subscribe","jobId":"...","after":seq?}` and `{"op":"unsubscribe","jobId":"..."}` (WsClientMessage in schema/events.ts); receive ProgressEvent frames and `{op: subscribed | unsubscribed | error}` notices.',
          security: streamSecurity,
          parameters: [
            {
              name: 'jobId',
              in: 'query',
              description: 'subscribe to this job at connect, from its current state',
              schema: { type: 'string' },
            },
          ],
          responses: {
            '101': { description: 'switching protocols' },
            '400': json('ErrorBody', 'not a valid WebSocket handshake (Sec-WebSocket-Key/Version)'),
            '404': json('ErrorBody', 'not an upgrade request (no `Upgrade: websocket`)'),
            ...errors(401, 403, 429),
          },
        },
      },
      '/healthz': {
        get: {
          operationId: 'healthz',
          tags: ['operations'],
          security: open,
          summary: 'Liveness',
          responses: { '200': { description: 'alive' }, ...throttled },
        },
      },
      '/readyz': {
        get: {
          operationId: 'readyz',
          tags: ['operations'],
          security: open,
          summary: 'Readiness: Redis, Postgres and S3 reachable',
          responses: {
            '200': { description: 'ready' },
            ...throttled,
            '503': { description: 'a backing service is down: `checks` says which (ok or down), not why' },
          },
        },
      },
      '/metrics': {
        get: {
          operationId: 'metrics',
          tags: ['operations'],
          security: [{ metricsBearer: [] }],
          summary: 'Prometheus metrics of the gateway',
          responses: {
            '200': { description: 'text exposition format' },
            '401': json('ErrorBody', 'METRICS_TOKEN is set and the request has not got it'),
            ...throttled,
          },
        },
      },
      '/openapi.json': {
        get: {
          operationId: 'openapi',
          tags: ['operations'],
          security: open,
          summary: 'This document',
          responses: { '200': { description: 'OpenAPI 3.1' }, ...errors(403), ...throttled },
        },
      },
    },
  }
}
