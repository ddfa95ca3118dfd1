import { createServer, type IncomingMessage, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import { setTimeout as sleep } from 'node:timers/promises'
import { afterEach, describe, expect, it } from 'vitest'
import { GatewayClient } from '../../gateway/cli/client.ts'
import { followJob } from '../../gateway/cli/follow.ts'
import type { ProgressEvent } from '../../schema/events.ts'

// The CLI's SSE following against a small HTTP server that plays the gateway: what the real gateway
// never sends on its own (events split across writes, CR LF line ends, comments, a dropped connection at
// a chosen point) and the Last-Event-ID of the resumption.

const event = (seq: number, status = 'running'): ProgressEvent =>
  ({
    jobId: 'j1',
    status,
    progress: status === 'completed' ? 100 : seq * 10,
    message: `step ${seq}`,
    timestamp: new Date(0).toISOString(),
    seq,
    type: 'train_lora',
    attempt: 1,
  }) as ProgressEvent

const frame = (e: ProgressEvent) => `event: progress\r\nid: ${e.seq}\r\ndata: ${JSON.stringify(e)}\r\n\r\n`

let close: (() => Promise<void>) | undefined
afterEach(async () => {
  await close?.()
  close = undefined
})

async function gateway(streams: ((req: IncomingMessage, res: ServerResponse) => Promise<void>)[]) {
  const lastEventIds: (string | undefined)[] = []
  const server = createServer((req, res) => {
    if (req.url === '/api/jobs/j1') {
      res.writeHead(200, { 'content-type': 'application/json' })
      return void res.end(JSON.stringify({ jobId: 'j1', status: 'running', progress: 0, seq: 0 }))
    }
    if (req.url === '/api/jobs/j1/events') {
      lastEventIds.push(req.headers['last-event-id'] as string | undefined)
      const play = streams.shift()
      res.writeHead(200, { 'content-type': 'text/event-stream' })
      if (play) void play(req, res)
      return
    }
    res.writeHead(404).end()
  })
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
  close = () => {
    server.closeAllConnections()
    return new Promise<void>((r) => server.close(() => r()))
  }
  const { port } = server.address() as AddressInfo
  return { client: new GatewayClient(new URL(`http://127.0.0.1:${port}/`), undefined), lastEventIds }
}

describe('follow over SSE', () => {
  it('parses events split anywhere, skips comments, and resumes after the last seq with Last-Event-ID', async () => {
    const { client, lastEventIds } = await gateway([
      async (_req, res) => {
        const text = `: keep-alive\r\n\r\n${frame(event(1))}${frame(event(2))}`
        // A CR at the end of one write and its LF at the start of the next, and every other cut too.
        for (const piece of text.match(/[\s\S]{1,7}/g) ?? []) {
          res.write(piece)
          await sleep(1)
        }
        res.socket?.destroy()
      },
      async (_req, res) => {
        res.end(frame(event(3, 'completed')))
      },
    ])
    const events: ProgressEvent[] = []
    const reconnects: string[] = []
    const result = await followJob({
      client,
      jobId: 'j1',
      transport: 'sse',
      onEvent: (e) => events.push(e),
      onReconnect: ({ reason }) => reconnects.push(reason),
      reconnect: { baseDelayMs: 10, maxDelayMs: 20 },
    })
    expect(events.map((e) => e.seq)).toEqual([1, 2, 3])
    expect(result).toEqual({ final: event(3, 'completed') })
    expect(lastEventIds).toEqual([undefined, '2'])
    expect(reconnects).toHaveLength(1)
  })

  it('reports each seq once when a resumption replays what was already seen', async () => {
    const { client } = await gateway([
      async (_req, res) => {
        res.write(frame(event(1)) + frame(event(2)))
        await sleep(5)
        res.socket?.destroy()
      },
      async (_req, res) => {
        res.end(frame(event(2)) + frame(event(3)) + frame(event(4, 'completed')))
      },
    ])
    const seqs: number[] = []
    await followJob({
      client,
      jobId: 'j1',
      transport: 'sse',
      onEvent: (e) => seqs.push(e.seq),
      reconnect: { baseDelayMs: 10, maxDelayMs: 20 },
    })
    expect(seqs).toEqual([1, 2, 3, 4])
  })
})
