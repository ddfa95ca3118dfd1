/**
 * Redis names shared by the gateway and the GPU hosts. Per-job keys carry the job id in a hash tag so
 * that one job's keys land on one Redis Cluster slot (the event script touches two of them at once).
 */
export const QUEUE_NAME = 'gpu-jobs'

/** Pub/sub channel of a job's progress events (contract). */
export const progressChannel = (jobId: string): string => `progress:${jobId}`
export const PROGRESS_PATTERN = 'progress:*'

/** Counter that gives each event of a job its `seq`. */
export const seqKey = (jobId: string): string => `gpu-jobs:{${jobId}}:seq`
/** Capped stream of a job's events, for replay. */
export const eventLogKey = (jobId: string): string => `gpu-jobs:{${jobId}}:events`
/** Set when a job is cancelled, so a host about to start it refuses. */
export const cancelKey = (jobId: string): string => `gpu-jobs:{${jobId}}:cancel`
/** Broadcast to every GPU host: `{"jobId": "..."}`; the host running the job kills it. */
export const CANCEL_CHANNEL = 'gpu-jobs:cancel'

/**
 * A GPU host's heartbeat (`GET /api/hosts`): its state as JSON (schema/hosts.ts), under a TTL the host
 * refreshes at every beat. Per queue prefix, since hosts of another prefix are another fleet.
 */
export const hostKey = (queuePrefix: string, hostId: string): string =>
  `gpu-jobs:${queuePrefix}:host:${hostId}`
/** Sorted set of the hosts that heartbeat on a queue prefix, scored by when their key expires (ms). */
export const hostsKey = (queuePrefix: string): string => `gpu-jobs:${queuePrefix}:hosts`
/** Pub/sub channel of a job's log lines while it runs (`{attempt, lines}`; never on `progress:<jobId>`). */
export const logsChannel = (jobId: string): string => `logs:${jobId}`
