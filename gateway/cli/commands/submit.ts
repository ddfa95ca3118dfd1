import { readFileSync } from 'node:fs'
import type { SubmitJobBody } from '../../../schema/api.ts'
import { JOB_TYPES } from '../../../schema/params/index.ts'
import { CommandUsageError, clientFor, EXIT, help, line, parse, type RunIO } from '../command.ts'
import {
  type JsonObject,
  paramsFromAssignments,
  parseDuration,
  parseIntOption,
  parseParamsJson,
  UsageError,
} from '../params.ts'
import { followToEnd } from './follow.ts'

/** `--params '<json>'` or `--params @file`. */
function readParamsOption(text: string): JsonObject {
  if (!text.startsWith('@')) return parseParamsJson(text)
  const file = text.slice(1)
  let content: string
  try {
    content = readFileSync(file, 'utf8')
  } catch (err) {
    throw new UsageError(
      `--params ${text}: cannot read ${file} (${(err as NodeJS.ErrnoException).code ?? err})`,
    )
  }
  return parseParamsJson(content, `--params ${text}`)
}

/** `gpu-jobs submit <type> [--param k=v ...] [--params json|@file] [options] [--follow]`. */
export async function submit(args: string[], io: RunIO): Promise<number> {
  const { values, positionals } = parse(args, {
    param: { type: 'string', short: 'p', multiple: true },
    params: { type: 'string' },
    'job-id': { type: 'string' },
    priority: { type: 'string' },
    timeout: { type: 'string' },
    'max-attempts': { type: 'string' },
    follow: { type: 'boolean', short: 'f' },
    sse: { type: 'boolean' },
    json: { type: 'boolean' },
  })
  if (values.help) return help(io, 'submit')
  if (positionals.length === 0)
    throw new CommandUsageError(`missing the job type (${JOB_TYPES.join(', ')})`, 'submit')
  if (positionals.length > 1)
    throw new CommandUsageError(
      `unexpected argument "${positionals[1]}" (parameters go in --param key=value)`,
      'submit',
    )
  const type = positionals[0] as SubmitJobBody['type']
  const params = paramsFromAssignments(
    values.param ?? [],
    values.params ? readParamsOption(values.params) : {},
  )
  const priority = parseIntOption('priority', values.priority)
  const timeoutSec = parseDuration('timeout', values.timeout)
  const maxAttempts = parseIntOption('max-attempts', values['max-attempts'])
  const body: SubmitJobBody = {
    type,
    params,
    ...(values['job-id'] === undefined ? {} : { jobId: values['job-id'] }),
    ...(priority === undefined ? {} : { priority }),
    ...(timeoutSec === undefined ? {} : { timeoutSec }),
    ...(maxAttempts === undefined ? {} : { maxAttempts }),
  }
  const client = clientFor(io, values.url)
  const res = await client.submit(body)
  if (values.json) line(io.stdout, JSON.stringify(res.body))
  else line(io.stdout, res.body.jobId)
  if (res.status === 200)
    line(
      io.stderr,
      `note: job ${res.body.jobId} already exists (${res.body.status}); nothing new was submitted`,
    )
  if (!values.follow) return EXIT.ok
  return followToEnd(io, client, res.body.jobId, {
    transport: values.sse ? 'sse' : 'ws',
    json: !!values.json,
  })
}
