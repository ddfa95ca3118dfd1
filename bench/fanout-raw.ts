/**
 * Child process of bench/fanout.ts: the baseline with no project code. An ioredis pattern subscriber
 * whose messages go as they are to the `ws` clients of each channel's job, and a bare node:http server
 * that answers `GET /api/status/:jobId` with JSON held in memory.
 */
import { createServer } from 'node:http'
import type { AddressInfo } from 'node:net'
import { Redis } from 'ioredis'
import { type WebSocket, WebSocketServer } from 'ws'
import { processStats } from './lib.ts'

const prefix = process.env.BENCH_RAW_CHANNEL_PREFIX ?? 'rawbench:'
const bodies = new Map<string, string>()
const server = createServer((req, res) => {
  const url = req.url ?? '/'
  const body = url.startsWith('/api/status/') ? bodies.get(decodeURIComponent(url.slice(12))) : undefined
  if (body === undefined) {
    res.writeHead(404, { 'content-type': 'application/json' }).end('{"error":{"code":"not_found"}}')
    return
  }
  res.writeHead(200, { 'content-type': 'application/json' }).end(body)
})
const wss = new WebSocketServer({ server, path: '/ws' })
const followers = new Map<string, Set<WebSocket>>()
wss.on('connection', (ws, req) => {
  const jobId = new URL(req.url ?? '/', 'http://x').searchParams.get('jobId') ?? ''
  const set = followers.get(jobId) ?? new Set<WebSocket>()
  followers.set(jobId, set)
  set.add(ws)
  ws.on('close', () => set.delete(ws))
  ws.on('error', () => {})
  ws.send(JSON.stringify({ op: 'subscribed', jobId }))
})

const sub = new Redis(process.env.BENCH_REDIS_URL ?? 'redis://127.0.0.1:6379')
sub.on('pmessage', (_pattern: string, channel: string, message: string) => {
  const set = followers.get(channel.slice(prefix.length))
  if (set) for (const ws of set) ws.send(message)
})
await sub.psubscribe(`${prefix}*`)
await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))

process.on('message', (msg: { op?: string; id?: number; bodies?: Record<string, string> }) => {
  if (msg.op === 'stats') process.send?.({ op: 'stats', id: msg.id, ...processStats() })
  else if (msg.op === 'bodies') {
    for (const [k, v] of Object.entries(msg.bodies ?? {})) bodies.set(k, v)
    process.send?.({ op: 'bodies', id: msg.id })
  } else if (msg.op === 'exit') {
    for (const ws of wss.clients) ws.terminate()
    wss.close()
    server.close()
    server.closeAllConnections()
    sub.disconnect()
    process.exit(0)
  }
})
process.on('disconnect', () => process.exit(0))
process.send?.({ op: 'ready', url: `http://127.0.0.1:${(server.address() as AddressInfo).port}` })
