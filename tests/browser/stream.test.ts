import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest'
import {
  addEvent,
  backoffDelay,
  JobStream,
  type ProgressEvent,
  type WebSocketLike,
} from '../../gateway/console/stream.js'

/** A WebSocket stand-in: records what the stream sends and lets the test play the gateway. */
class FakeSocket implements WebSocketLike {
  static all: FakeSocket[] = []
  readyState = 0
  sent: Record<string, unknown>[] = []
  onopen: ((e?: unknown) => void) | null = null
  onmessage: ((e: { data: unknown }) => void) | null = null
  onclose: ((e?: unknown) => void) | null = null
  onerror: ((e?: unknown) => void) | null = null
  constructor(readonly url: string) {
    FakeSocket.all.push(this)
  }
  send(data: string) {
    this.sent.push(JSON.parse(data) as Record<string, unknown>)
  }
  close() {
    this.readyState = 3
  }
  open() {
    this.readyState = 1
    this.onopen?.()
  }
  drop() {
    this.readyState = 3
    this.onclose?.()
  }
  receive(msg: unknown) {
    this.onmessage?.({ data: JSON.stringify(msg) })
  }
  subscribes() {
    return this.sent.filter((m) => m.op === 'subscribe')
  }
}

const ev = (jobId: string, seq: number, status = 'running'): ProgressEvent => ({
  jobId,
  status,
  progress: seq,
  message: `step ${seq}`,
  timestamp: new Date(0).toISOString(),
  seq,
  type: 'train_lora',
  attempt: 1,
})

const last = () => FakeSocket.all.at(-1) as FakeSocket

function makeStream() {
  const events: ProgressEvent[] = []
  const states: string[] = []
  const stream = new JobStream({
    url: () => 'ws://gateway/ws?token=t',
    onEvent: (e) => events.push(e),
    onState: (s) => states.push(s),
    WebSocket: FakeSocket,
    backoff: { min: 100, max: 1000, random: () => 1 },
    settleMs: 50,
  })
  return { stream, events, states }
}

/** A stream started, its socket open (the gateway answered the upgrade). */
function openStream() {
  const { stream } = makeStream()
  stream.start()
  last().open()
  return stream
}

beforeEach(() => {
  FakeSocket.all = []
  vi.useFakeTimers()
})
afterEach(() => {
  vi.useRealTimers()
})

describe('JobStream', () => {
  it('subscribes each followed job on one socket, from the seq it asks for', () => {
    const { stream } = makeStream()
    stream.follow('a', 3)
    stream.start()
    stream.follow('b')
    expect(FakeSocket.all).toHaveLength(1)
    last().open()
    expect(last().subscribes()).toEqual([
      { op: 'subscribe', jobId: 'a', after: 3 },
      { op: 'subscribe', jobId: 'b', after: 0 },
    ])
    stream.follow('c', 7)
    expect(last().subscribes().at(-1)).toEqual({ op: 'subscribe', jobId: 'c', after: 7 })
    stream.unfollow('b')
    expect(last().sent.at(-1)).toEqual({ op: 'unsubscribe', jobId: 'b' })
  })

  it('reconnects with backoff and resumes every job after the last seq it delivered', () => {
    const { stream, events, states } = makeStream()
    stream.start()
    stream.follow('a', 0)
    stream.follow('b', 10)
    const first = last()
    first.open()
    first.receive({ op: 'subscribed', jobId: 'a' })
    first.receive({ op: 'subscribed', jobId: 'b' })
    for (let s = 1; s <= 5; s++) first.receive(ev('a', s))
    first.receive(ev('b', 11))
    first.drop()
    expect(states.at(-1)).toBe('waiting')
    // Still down on the next try: the wait doubles.
    vi.advanceTimersByTime(100)
    expect(FakeSocket.all).toHaveLength(2)
    last().drop()
    vi.advanceTimersByTime(199)
    expect(FakeSocket.all).toHaveLength(2)
    vi.advanceTimersByTime(1)
    expect(FakeSocket.all).toHaveLength(3)
    last().open()
    expect(states.at(-1)).toBe('open')
    expect(last().subscribes()).toEqual([
      { op: 'subscribe', jobId: 'a', after: 5 },
      { op: 'subscribe', jobId: 'b', after: 11 },
    ])
    expect(events.map((e) => `${e.jobId}${e.seq}`)).toEqual(['a1', 'a2', 'a3', 'a4', 'a5', 'b11'])
    stream.close()
  })

  it('does not move the resume point on events of a subscription being replaced', () => {
    const stream = openStream()
    stream.follow('a', 0)
    // Events before the answer may come from an earlier subscription: they do not count.
    last().receive(ev('a', 40))
    last().receive({ op: 'subscribed', jobId: 'a' })
    last().receive(ev('a', 1))
    last().receive(ev('a', 2))
    // A stray event out of order (e.g. from a subscription the gateway had not replaced yet) neither.
    last().receive(ev('a', 41))
    expect(stream.lastSeq('a')).toBe(2)
    last().receive(ev('a', 3))
    expect(stream.lastSeq('a')).toBe(3)
  })

  it('accepts a jump on the first event of a subscription (events the gateway no longer keeps)', () => {
    const stream = openStream()
    stream.follow('old', 0)
    last().receive({ op: 'subscribed', jobId: 'old' })
    last().receive(ev('old', 812, 'completed'))
    expect(stream.lastSeq('old')).toBe(812)
  })

  it('asks for a replay from an earlier seq only once the first subscribe has settled', () => {
    const stream = openStream()
    stream.follow('a', 20)
    stream.follow('a', 0) // the detail wants the whole history
    expect(last().subscribes()).toEqual([{ op: 'subscribe', jobId: 'a', after: 20 }])
    last().receive({ op: 'subscribed', jobId: 'a' })
    vi.advanceTimersByTime(49)
    expect(last().subscribes()).toHaveLength(1)
    vi.advanceTimersByTime(1)
    expect(last().subscribes()).toEqual([
      { op: 'subscribe', jobId: 'a', after: 20 },
      { op: 'subscribe', jobId: 'a', after: 0 },
    ])
    // Following from a later seq than the current subscription changes nothing.
    stream.follow('a', 30)
    expect(last().subscribes()).toHaveLength(2)
  })

  it('asks again when a subscribe gets no answer (the gateway drops one made while another is set up)', () => {
    const stream = openStream()
    stream.follow('a', 0)
    last().receive({ op: 'subscribed', jobId: 'a' })
    stream.follow('b', 2)
    vi.advanceTimersByTime(3000)
    // 'a' was answered: asked once; 'b' was not: asked again, from where it stands.
    expect(last().subscribes()).toEqual([
      { op: 'subscribe', jobId: 'a', after: 0 },
      { op: 'subscribe', jobId: 'b', after: 2 },
      { op: 'subscribe', jobId: 'b', after: 2 },
    ])
    last().receive({ op: 'subscribed', jobId: 'b' })
    last().receive(ev('b', 3))
    expect(stream.lastSeq('b')).toBe(3)
    vi.advanceTimersByTime(10_000)
    expect(last().subscribes()).toHaveLength(3)
  })

  it('sync follows exactly the wanted jobs', () => {
    const stream = openStream()
    stream.sync(
      new Map([
        ['a', 1],
        ['b', 2],
      ]),
    )
    stream.sync(new Map([['b', 5]]))
    expect(stream.has('a')).toBe(false)
    expect(stream.has('b')).toBe(true)
    expect(last().sent).toEqual([
      { op: 'subscribe', jobId: 'a', after: 1 },
      { op: 'subscribe', jobId: 'b', after: 2 },
      { op: 'unsubscribe', jobId: 'a' },
    ])
  })

  it('forgets a job the gateway does not know, and retries one it could not subscribe', () => {
    const stream = openStream()
    stream.follow('gone')
    stream.follow('busy', 4)
    last().receive({ op: 'error', jobId: 'gone', error: { code: 'not_found', message: 'no such job' } })
    last().receive({ op: 'error', jobId: 'busy', error: { code: 'unavailable', message: 'retry' } })
    expect(stream.has('gone')).toBe(false)
    vi.advanceTimersByTime(1000)
    expect(last().subscribes().at(-1)).toEqual({ op: 'subscribe', jobId: 'busy', after: 4 })
  })

  it('restart opens a new socket at once (a new token)', () => {
    const { stream } = makeStream()
    stream.start()
    stream.follow('a', 2)
    last().open()
    const old = last()
    stream.restart()
    expect(old.readyState).toBe(3)
    expect(FakeSocket.all).toHaveLength(2)
    last().open()
    expect(last().subscribes()).toEqual([{ op: 'subscribe', jobId: 'a', after: 2 }])
    // The old socket's late messages are ignored.
    old.onmessage?.({ data: JSON.stringify(ev('a', 3)) })
    expect(stream.lastSeq('a')).toBe(2)
  })
})

describe('helpers', () => {
  it('addEvent keeps one event per seq', () => {
    const history = new Map<number, ProgressEvent>()
    expect(addEvent(history, ev('a', 1))).toBe(true)
    expect(addEvent(history, ev('a', 2))).toBe(true)
    expect(addEvent(history, ev('a', 1))).toBe(false)
    expect([...history.keys()]).toEqual([1, 2])
  })

  it('backoffDelay doubles up to a cap, with jitter in the upper half', () => {
    expect(backoffDelay(0, { min: 250, max: 10_000, random: () => 1 })).toBe(250)
    expect(backoffDelay(3, { min: 250, max: 10_000, random: () => 1 })).toBe(2000)
    expect(backoffDelay(30, { min: 250, max: 10_000, random: () => 1 })).toBe(10_000)
    expect(backoffDelay(30, { min: 250, max: 10_000, random: () => 0 })).toBe(5000)
  })
})
