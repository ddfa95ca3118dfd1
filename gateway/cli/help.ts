import { JOB_TYPES } from '../../schema/params/index.ts'
import { DEFAULT_URL } from './client.ts'

// The texts of `gpu-jobs --help` and of each command's --help.

const ENV_HELP = `Environment:
  GPU_JOBS_URL    the gateway (default ${DEFAULT_URL}); a path prefix is kept
  GPU_JOBS_TOKEN  API token, sent as Authorization: Bearer <token>`

const EXIT_HELP = `Exit codes:
  0  done (follow: the job completed)
  1  follow: the job failed
  2  follow: the job was cancelled
  3  bad usage, gateway unreachable, or the API refused the request
     (invalid params, unknown job, bad token, job already finished, ...)
  130 interrupted (Ctrl-C)`

/** `gpu-jobs --help` (`main`) and each command's `--help`, by command. */
export const HELP: Record<string, string> = {
  main: `gpu-jobs: submit, watch and manage jobs on the GPU job gateway

Usage: gpu-jobs <command> [options]

Commands:
  submit <type>   submit a job (${JOB_TYPES.join(', ')})
  status <id>     show a job: status, progress, timings, error, result, artifacts
  list            list jobs, newest first
  cancel <id>     cancel a queued, retrying or running job
  follow <id>     watch a job's progress live until it ends
  rerun <id>      submit a new job with a job's type, params and options
  retry <id>      start a retrying job's next attempt now
  hosts           the GPU hosts: status, slots, GPUs and VRAM, engines, running jobs
  queue           queue depth: jobs by state and type, oldest waiting, last hour
  logs <id>       print what a job's process printed (stdout, stderr, ctx.log), per attempt

Run "gpu-jobs <command> --help" for a command's options.
Every command takes --url <url> (overrides GPU_JOBS_URL) and -h/--help.
A job <id> may be given by its start (the 8 characters "list" and the console show, or more) when only
one job's id starts with it.

${ENV_HELP}

${EXIT_HELP}`,
  submit: `Usage: gpu-jobs submit <type> [--param key=value ...] [--params <json>|@file] [options]

Submit a job of <type> (${JOB_TYPES.join(', ')}). Prints its id; with --follow, then its progress.

Options:
  -p, --param key=value  one parameter; repeat for more. Values are typed when they look like it:
                         3 and 1e-4 are numbers, true/false/null are themselves, {..} [..] "..." are JSON,
                         anything else a string (quote it as JSON to keep a string: name='"007"').
                         Dotted keys nest: inputs.prompt="a cat" -> {"inputs":{"prompt":"a cat"}}.
      --params <json>    all parameters as a JSON object, or @path to read it from a file;
                         --param values are merged over it
      --job-id <id>      your own job id (1-128 of A-Z a-z 0-9 _ . -, not all digits); submitting
                         the same id again returns the existing job
      --priority <n>     BullMQ priority, 1 (highest) to 2097151
      --timeout <dur>    hard timeout of one attempt: seconds, or 90s, 30m, 2h, 1d
      --max-attempts <n> attempts before the job fails (1-20)
  -f, --follow           then follow the job like "gpu-jobs follow" (and exit with its exit code)
      --sse              follow over Server-Sent Events instead of WebSocket
      --json             print the API's JSON response (and, with --follow, each event as a JSON line)

Examples:
  gpu-jobs submit train_lora -p baseModel=sd15 -p datasetPath=demo -p epochs=3 --follow
  gpu-jobs submit render_video -p inputs.prompt="a red fox" -p inputs.seed=42 -p frames=24
  gpu-jobs submit train_voice --params '{"speakerName":"ann","datasetPath":"demo"}' --priority 1

${ENV_HELP}

${EXIT_HELP}`,
  status: `Usage: gpu-jobs status <id> [--json]

Show a job: status and progress, attempts, timings, params, error, result and artifacts with their
download URLs. Exits 0 whatever the job's status (use "gpu-jobs follow" to wait for the outcome).

Options:
      --json   print the API's JSON body instead

${ENV_HELP}`,
  list: `Usage: gpu-jobs list [--status <s>] [--type <t>] [--q <text>] [--limit <n>] [--cursor <c>] [--json]

List jobs, newest first. When there are more, the command for the next page is printed on stderr.

Options:
      --status <s>   only jobs in this status: queued, running, retrying, completed, failed, cancelled
      --type <t>     only jobs of this type: ${JOB_TYPES.join(', ')}
      --q <text>     search: jobs whose id starts with <text> or whose message contains it (any case);
                     also --search <text>
      --limit <n>    at most n jobs (1-500, default 50)
      --cursor <c>   the page after this cursor (from the previous page)
      --json         print the API's JSON body ({jobs, nextCursor}) instead

${ENV_HELP}`,
  cancel: `Usage: gpu-jobs cancel <id> [--json]

Cancel a queued, retrying or running job; a running job's process group is killed by its GPU host.
A job that has already finished is refused (exit 3). Then "gpu-jobs follow <id>" exits 2 once it has
stopped.

Options:
      --json   print the API's JSON response instead

${ENV_HELP}`,
  rerun: `Usage: gpu-jobs rerun <id> [--follow] [--sse] [--json]

Submit a new job with the type, params (as stored) and options (priority, timeout, max attempts) of job
<id>, whatever its status. Prints the new job's id; with --follow, then its progress.

Options:
  -f, --follow   then follow the new job like "gpu-jobs follow" (and exit with its exit code)
      --sse      follow over Server-Sent Events instead of WebSocket
      --json     print the API's JSON response (and, with --follow, each event as a JSON line)

${ENV_HELP}

${EXIT_HELP}`,
  retry: `Usage: gpu-jobs retry <id> [--json]

Start the next attempt of a retrying job (one whose attempt failed and that waits for its backoff) now;
a GPU host takes it as soon as a slot is free. Any other status is refused (exit 3).

Options:
      --json   print the API's JSON response instead

${ENV_HELP}`,
  follow: `Usage: gpu-jobs follow <id> [--sse] [--json]

Watch a job until it ends: its current state, then every progress event live. On a terminal it draws a
progress bar; otherwise (a pipe, a log) it prints one line per event:
  <timestamp>  #<seq> <status> <progress>%  <message>
Percentages are whole, rounded down: 100% only once the job has completed. When it ends, stderr says
how (its duration; a failed job's error) and lists its artifacts (path, size, checksum, download URL).
A dropped connection is retried with backoff and resumed after the last event seen, so no event is
missed or shown twice; it gives up after 60s without the gateway (exit 3). Ctrl-C stops following, not
the job (exit 130), and says how to resume.

Options:
      --sse    use Server-Sent Events (GET /api/jobs/<id>/events) instead of the WebSocket (/ws)
      --json   print each event as one JSON line

${ENV_HELP}

${EXIT_HELP}`,
  hosts: `Usage: gpu-jobs hosts [--json]

Show every GPU host that heartbeats: status (up; draining while it shuts down; gone after 3 missed
beats, until it is dropped a minute later), version, uptime, last beat, slots busy, engines per job type;
then each GPU (VRAM used, reserved for this host's jobs, total, utilisation) and each running job (with
API tokens, only your own: another token's job shows only as a busy slot). Columns are aligned in a pipe too.

Options:
      --json   print the API's JSON body ({hosts}) instead

${ENV_HELP}`,
  queue: `Usage: gpu-jobs queue [--json]

Show how deep the queue is: BullMQ's jobs by state (the whole fleet's), unfinished jobs by type
(queued, running, retrying), the oldest waiting job's age, and the jobs completed and failed in the last
hour. With API tokens the per-type and last-hour counts are your token's own.

Options:
      --json   print the API's JSON body instead

${ENV_HELP}`,
  logs: `Usage: gpu-jobs logs <id> [--attempt N] [--follow] [--json]

Print what the job's process printed in one attempt (default: the latest), one line each:
  <HH:MM:SS.mmm UTC> <stdout|stderr|log> <text>
A summary (line count, lines dropped over the per-attempt cap, the other attempts) goes to stderr.

Options:
      --attempt <n>  the attempt to show (1, 2, ...)
  -f, --follow       then stream new lines live until the attempt ends (Ctrl-C stops following,
                     not the job); a dropped connection resumes after the last line seen
      --json         print the API's JSON body (with --follow: each line as a JSON line)

${ENV_HELP}`,
}
