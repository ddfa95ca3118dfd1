import type * as v from 'valibot'
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
import { JOB_STATUSES } from '../schema/common.ts'
import { ProgressEvent, WsClientMessage } from '../schema/events.ts'
import { HostsBody } from '../schema/hosts.ts'
import { jsonSchemaOf, paramsJsonSchema } from '../schema/json-schema.ts'
import { JOB_TYPES } from '../schema/params/index.ts'
import { QueueBody } from '../schema/queue.ts'

/** A component: its JSON Schema without `$schema` (OpenAPI 3.1 components are JSON Schema 2020-12). */
const component = ({ $schema: _drop, ...rest }: Record<string, unknown>) => rest
const schema = (s: v.GenericSchema) => component(jsonSchemaOf(s))
const ref = (name: string) => ({ $ref: `#/components/schemas/${name}` })
const json = (name: string, description: string) => ({
  description,
  content: { 'application/json': { schema: ref(name) } },
})
const errors = (...codes: number[]) =>
  Object.fromEntries(
    codes.map((c) => [
      String(c),
      json(
        'ErrorBody',
        {
          400: 'invalid input: which field and why',
          401: 'no or bad token',
          403: 'cross-site request (foreign Origin or Host; see ALLOWED_ORIGINS)',
          404: 'unknown job (or another owner’s)',
          409: 'conflict (a submit: the jobId exists with a different request; a retry: the job is not retrying; a re-run: its stored params no longer pass)',
          413: 'body over 1 MB, or params over MAX_PARAMS_BYTES',
          415: 'body is not JSON (content-type: application/json)',
          416: 'Range malformed or past the end of the file (content-range: bytes */<size>)',
          429: 'rate limited (see Retry-After), or over MAX_QUEUED_JOBS_PER_TOKEN (quota_exceeded)',
          503: 'backend_unavailable: Redis, Postgres or S3 (named) is down; for a submit, nothing was queued',
        }[c] ?? 'error',
      ),
    ]),
  )
const jobIdParam = {
  name: 'jobId',
  in: 'path',
  required: true,
  schema: { type: 'string', pattern: '^[A-Za-z0-9_.-]{1,128}$' },
}

/** The OpenAPI 3.1 document of the gateway, generated from the valibot schemas in schema/. */
export function openApiDocument(): Record<string, unknown> {
  const submit = {
    summary: 'Submit a job',
    description: `Params are checked against the type's schema (components: ${JOB_TYPES.map((t) => `Params_${t}`).join(', ')}); unknown keys are rejected. The same jobId twice is one job.`,
    requestBody: { required: true, content: { 'application/json': { schema: ref('SubmitJobBody') } } },
    responses: {
      '202': json('SubmitJobResponse', 'queued'),
      '200': json('SubmitJobResponse', 'a job with this jobId exists already'),
      ...errors(400, 401, 403, 409, 413, 415, 429, 503),
    },
  }
  const status = {
    summary: 'A job: its stored state merged with its latest live progress',
    parameters: [jobIdParam],
    responses: { '200': json('JobStatusBody', 'the job'), ...errors(401, 404, 429, 503) },
  }
  return {
    openapi: '3.1.0',
    info: {
      title: 'GPU jobs gateway',
      version: '0.1.0',
      description: 'Submit GPU jobs, follow their progress, download their artifacts.',
    },
    components: {
      securitySchemes: {
        bearer: {
          type: 'http',
          scheme: 'bearer',
          description: 'When API_TOKENS is set; only WebSocket and SSE also accept ?token=',
        },
      },
      schemas: {
        SubmitJobBody: schema(SubmitJobBody),
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
        WsClientMessage: schema(WsClientMessage),
        HostsBody: schema(HostsBody),
        QueueBody: schema(QueueBody),
        // The console builds its job forms from these (gateway/console/job-types.js).
        ...Object.fromEntries(JOB_TYPES.map((t) => [`Params_${t}`, component(paramsJsonSchema(t))])),
      },
    },
    security: [{ bearer: [] }],
    paths: {
      '/api/train': { post: { ...submit, operationId: 'submitJob' } },
      '/api/jobs': {
        post: { ...submit, operationId: 'submitJobAlias' },
        get: {
          operationId: 'listJobs',
          summary:
            'List jobs, newest first: summaries (no params, result or artifacts; see the status route)',
          parameters: [
            { name: 'status', in: 'query', schema: { type: 'string', enum: [...JOB_STATUSES] } },
            { name: 'type', in: 'query', schema: { type: 'string', enum: [...JOB_TYPES] } },
            {
              name: 'limit',
              in: 'query',
              schema: { type: 'integer', minimum: 1, maximum: 500, default: 50 },
            },
            { name: 'cursor', in: 'query', schema: { type: 'string' } },
            {
              name: 'q',
              in: 'query',
              description:
                'search: jobs whose id starts with it (as typed) or whose message contains it (any case); % and _ are literal',
              schema: { type: 'string', maxLength: 200 },
            },
          ],
          responses: { '200': json('JobListBody', 'a page of jobs'), ...errors(400, 401, 429, 503) },
        },
      },
      '/api/jobs/batch': {
        post: {
          operationId: 'submitJobs',
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
      '/api/jobs/{jobId}': { get: { ...status, operationId: 'getJob' } },
      '/api/jobs/{jobId}/cancel': {
        post: {
          operationId: 'cancelJob',
          summary: 'Cancel a queued, retrying or running job (the running process group is killed)',
          parameters: [jobIdParam],
          responses: {
            '202': { description: 'cancelled, or cancellation sent to the host running it' },
            ...errors(401, 404, 409, 429, 503),
          },
        },
      },
      '/api/jobs/{jobId}/rerun': {
        post: {
          operationId: 'rerunJob',
          summary:
            'Run a job again: a new job (new id) with its type, params as stored and options (priority, timeoutSec, maxAttempts)',
          parameters: [jobIdParam],
          responses: {
            '202': json('SubmitJobResponse', 'the new job, queued'),
            ...errors(401, 404, 409, 429, 503),
          },
        },
      },
      '/api/jobs/{jobId}/retry': {
        post: {
          operationId: 'retryJob',
          summary: "Start a retrying job's next attempt now, before its backoff ends",
          parameters: [jobIdParam],
          responses: {
            '202': json('RetryJobResponse', 'the next attempt is due now'),
            ...errors(401, 404, 409, 429, 503),
          },
        },
      },
      '/api/jobs/{jobId}/artifacts': {
        get: {
          operationId: 'listArtifacts',
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
            ...errors(401, 404, 429),
          },
        },
      },
      '/api/jobs/{jobId}/artifacts/{path}': {
        get: {
          operationId: 'downloadArtifact',
          summary: 'Download an artifact (Range requests work)',
          parameters: [
            jobIdParam,
            { name: 'path', in: 'path', required: true, schema: { type: 'string' } },
            { name: 'Range', in: 'header', schema: { type: 'string' } },
          ],
          responses: {
            '200': { description: 'the file (also for several ranges, or a unit other than bytes)' },
            '206': { description: 'one byte range of the file' },
            ...errors(400, 401, 404, 416, 429, 503),
          },
        },
      },
      '/api/jobs/{jobId}/events': {
        get: {
          operationId: 'jobEvents',
          summary:
            'Server-Sent Events: every event after Last-Event-ID (or ?after=), then live; the current state first otherwise',
          parameters: [
            jobIdParam,
            {
              name: 'after',
              in: 'query',
              schema: { type: 'integer', minimum: 0, maximum: Number.MAX_SAFE_INTEGER },
            },
            { name: 'Last-Event-ID', in: 'header', schema: { type: 'string' } },
          ],
          responses: {
            '200': {
              description: 'event stream of ProgressEvent (event: progress, id: seq)',
              content: { 'text/event-stream': { schema: ref('ProgressEvent') } },
            },
            ...errors(400, 401, 404, 429),
          },
        },
      },
      '/api/hosts': {
        get: {
          operationId: 'listHosts',
          summary:
            'Every GPU host that heartbeats: slots, GPUs (VRAM used/reserved/total), engines, running jobs; `gone` after 3 missed beats until its key expires',
          description:
            'With API tokens every token sees every host, and a running job’s id only when it owns the job (`jobId` null otherwise).',
          responses: { '200': json('HostsBody', 'the hosts, by id'), ...errors(401, 429, 503) },
        },
      },
      '/api/queue': {
        get: {
          operationId: 'queueOverview',
          summary:
            'Queue depth: BullMQ counts by state, unfinished jobs by type, the oldest waiting job’s age, completed/failed in the last hour',
          description:
            'With API tokens `byType` and `lastHour` count the caller’s own jobs; `byState` and `oldestWaitingSec` are the fleet’s.',
          responses: { '200': json('QueueBody', 'the overview'), ...errors(401, 429, 503) },
        },
      },
      '/api/jobs/{jobId}/logs': {
        get: {
          operationId: 'jobLogs',
          summary:
            "What a job's process printed (stdout, stderr, ctx.log) in one attempt; with follow=1, Server-Sent Events until the attempt ends",
          description:
            'Each attempt keeps 2,000 lines and 1 MB at most (a line over 4 kB is cut); the rest are counted in `dropped`. With follow=1: `event: attempt` ({attempt}), then `event: log` per JobLogLine (id: its seq; resume with Last-Event-ID or ?after=), then `event: end` ({attempt, dropped}).',
          parameters: [
            jobIdParam,
            {
              name: 'attempt',
              in: 'query',
              description: 'the attempt (default: the latest)',
              schema: { type: 'integer', minimum: 1 },
            },
            { name: 'follow', in: 'query', schema: { type: 'string', enum: ['1', 'true'] } },
            {
              name: 'after',
              in: 'query',
              description: 'with follow=1: only lines after this seq',
              schema: { type: 'integer', minimum: 0 },
            },
            { name: 'Last-Event-ID', in: 'header', schema: { type: 'string' } },
          ],
          responses: {
            '200': {
              description: 'the lines (JobLogsBody), or with follow=1 an event stream of JobLogLine',
              content: {
                'application/json': { schema: ref('JobLogsBody') },
                'text/event-stream': { schema: ref('JobLogLine') },
              },
            },
            ...errors(400, 401, 404, 429, 503),
          },
        },
      },
      '/api/jobs/{jobId}/metrics': {
        get: {
          operationId: 'jobMetrics',
          summary:
            'The numbers a job reported with its progress (e.g. loss), one point per event, in seq order (at most 20,000)',
          parameters: [jobIdParam],
          responses: {
            '200': json('JobMetricsBody', 'the points'),
            ...errors(401, 404, 429, 503),
          },
        },
      },
      '/ws': {
        get: {
          operationId: 'websocket',
          summary:
            'WebSocket: send WsClientMessage ({op:"subscribe",jobId,after?} / {op:"unsubscribe",jobId}); receive ProgressEvent',
          parameters: [
            { name: 'jobId', in: 'query', schema: { type: 'string' } },
            { name: 'token', in: 'query', schema: { type: 'string' } },
          ],
          responses: { '101': { description: 'switching protocols' }, ...errors(401, 429) },
        },
      },
      '/healthz': {
        get: {
          operationId: 'healthz',
          security: [],
          summary: 'Liveness',
          responses: { '200': { description: 'alive' } },
        },
      },
      '/readyz': {
        get: {
          operationId: 'readyz',
          security: [],
          summary: 'Readiness: Redis, Postgres and S3 reachable',
          responses: {
            '200': { description: 'ready' },
            '503': { description: 'a backing service is down: `checks` says which (ok or down), not why' },
          },
        },
      },
      '/metrics': {
        get: {
          operationId: 'metrics',
          security: [],
          summary: 'Prometheus metrics (METRICS_TOKEN when set)',
          responses: { '200': { description: 'text exposition format' } },
        },
      },
      '/openapi.json': {
        get: {
          operationId: 'openapi',
          security: [],
          summary: 'This document',
          responses: { '200': { description: 'OpenAPI 3.1' } },
        },
      },
    },
  }
}
