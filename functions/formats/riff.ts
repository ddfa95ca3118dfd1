/**
 * RIFF building blocks shared by the WAVE and AVI writers and readers. A chunk is a four-character id, a
 * little-endian u32 body size, the body, and one pad byte when the size is odd. A LIST chunk's body starts
 * with its own four-character type (`hdrl`, `movi`, `INFO`, ...) followed by sub-chunks.
 */

export class RiffFormatError extends Error {
  override name = 'RiffFormatError'
}

const FOURCC = /^[\x20-\x7e]{4}$/
const INFO_ID = /^[A-Z0-9]{4}$/

function fourcc(id: string): Buffer {
  if (!FOURCC.test(id)) throw new TypeError(`"${id}" is not a four-character code`)
  return Buffer.from(id, 'latin1')
}

/** An 8-byte chunk header: id and body size. */
export function chunkHeader(id: string, size: number): Buffer {
  const head = Buffer.alloc(8)
  fourcc(id).copy(head, 0)
  head.writeUInt32LE(size, 4)
  return head
}

/** A whole chunk, padded to an even length. */
export function riffChunk(id: string, body: Uint8Array): Buffer {
  const parts = [chunkHeader(id, body.length), body]
  if (body.length % 2 === 1) parts.push(Buffer.alloc(1))
  return Buffer.concat(parts)
}

/** A `LIST` chunk of `type` holding `chunks` (each already a whole chunk). */
export const listChunk = (type: string, chunks: readonly Uint8Array[]): Buffer =>
  riffChunk('LIST', Buffer.concat([fourcc(type), ...chunks]))

/**
 * A `LIST`/`INFO` chunk: each entry (INAM, ICMT, ISFT, ...) a NUL-terminated UTF-8 string. Players show these
 * as the file's title, comment and encoder.
 */
export function infoList(info: Readonly<Record<string, string>>): Buffer {
  return listChunk(
    'INFO',
    Object.entries(info).map(([id, text]) => {
      if (!INFO_ID.test(id)) throw new TypeError(`INFO id "${id}" must be four capitals or digits`)
      return riffChunk(id, Buffer.concat([Buffer.from(text, 'utf8'), Buffer.alloc(1)]))
    }),
  )
}

export interface RiffChunk {
  id: string
  /** Where the chunk's 8-byte header starts. */
  offset: number
  /** Where its body starts, and the body's size (without the pad byte). */
  bodyOffset: number
  size: number
  /** For a LIST chunk, its type; its sub-chunks start at `bodyOffset + 4`. */
  listType?: string
}

/** The chunks laid end to end in `buf[start, end)`; throws when one runs past `end`. */
export function* walkChunks(buf: Buffer, start: number, end: number): Generator<RiffChunk> {
  let pos = start
  while (pos < end) {
    if (pos + 8 > end) throw new RiffFormatError(`truncated chunk header at byte ${pos}`)
    const id = buf.toString('latin1', pos, pos + 4)
    const size = buf.readUInt32LE(pos + 4)
    const bodyOffset = pos + 8
    if (bodyOffset + size > end)
      throw new RiffFormatError(`chunk "${id}" at byte ${pos} runs past its container`)
    const chunk: RiffChunk = { id, offset: pos, bodyOffset, size }
    if (id === 'LIST' || id === 'RIFF') {
      if (size < 4) throw new RiffFormatError(`${id} chunk at byte ${pos} has no type`)
      chunk.listType = buf.toString('latin1', bodyOffset, bodyOffset + 4)
    }
    yield chunk
    pos = bodyOffset + size + (size % 2)
  }
}

/** The sub-chunks of a LIST chunk. */
export const listChildren = (buf: Buffer, list: RiffChunk): Generator<RiffChunk> =>
  walkChunks(buf, list.bodyOffset + 4, list.bodyOffset + list.size)

/** The strings of a `LIST`/`INFO` chunk, by id. */
export function readInfoList(buf: Buffer, list: RiffChunk): Record<string, string> {
  const info: Record<string, string> = {}
  for (const c of listChildren(buf, list))
    info[c.id] = buf.toString('utf8', c.bodyOffset, c.bodyOffset + c.size).replace(/\0+$/, '')
  return info
}

/**
 * Checks the outer `RIFF <size> <form>` header and returns the top-level chunk; the size must match the
 * file exactly (a truncated upload is the usual way these files break).
 */
export function readRiffHeader(buf: Buffer, form: string): RiffChunk {
  if (buf.length < 12 || buf.toString('latin1', 0, 4) !== 'RIFF') throw new RiffFormatError('not a RIFF file')
  if (buf.toString('latin1', 8, 12) !== form) throw new RiffFormatError(`RIFF form is not "${form}"`)
  const size = buf.readUInt32LE(4)
  if (size + 8 !== buf.length)
    throw new RiffFormatError(`RIFF size says ${size + 8} bytes, file has ${buf.length}`)
  return { id: 'RIFF', offset: 0, bodyOffset: 8, size, listType: form }
}
