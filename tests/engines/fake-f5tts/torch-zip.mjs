// Writes a PyTorch zip-format checkpoint (what `torch.save` writes since 1.6): an uncompressed zip whose
// entries live under one `<archive>/` folder: `data.pkl` (the pickled object), `byteorder`, `version`,
// `.data/serialization_id`, `.format_version`, `.storage_alignment`. The object here is the dict F5-TTS's
// Trainer saves (model/optimizer/ema/scheduler state dicts and `update`) with empty state dicts: no tensor
// storages, so `torch.load(..., weights_only=True)` opens it and reads the keys and the update.
import { crc32 } from 'node:zlib'

/** Pickle protocol 2 of a flat dict whose values are ints, strings or empty dicts. */
export function pickleDict(obj) {
  const parts = [Buffer.from([0x80, 0x02]), Buffer.from('}(')]
  const str = (s) => {
    const b = Buffer.from(s, 'utf8')
    const len = Buffer.alloc(4)
    len.writeUInt32LE(b.length)
    return Buffer.concat([Buffer.from('X'), len, b])
  }
  for (const [key, value] of Object.entries(obj)) {
    parts.push(str(key))
    if (typeof value === 'number') {
      const v = Buffer.alloc(4)
      v.writeInt32LE(value)
      parts.push(Buffer.from('J'), v)
    } else if (typeof value === 'string') parts.push(str(value))
    else parts.push(Buffer.from('}'))
  }
  parts.push(Buffer.from('u.'))
  return Buffer.concat(parts)
}

/** Little-endian fields, in order: each `[bytes, value]` with bytes 2 or 4 (zip's record layout). */
function fields(...spec) {
  const buf = Buffer.alloc(spec.reduce((n, [bytes]) => n + bytes, 0))
  let at = 0
  for (const [bytes, value] of spec) {
    if (bytes === 2) buf.writeUInt16LE(value, at)
    else buf.writeUInt32LE(value, at)
    at += bytes
  }
  return buf
}

/** A stored (method 0) zip of `entries` ([name, Buffer][]), data aligned to 64 bytes as torch's writer does. */
export function storedZip(entries) {
  const chunks = []
  const central = []
  let offset = 0
  for (const [name, data] of entries) {
    const nameBuf = Buffer.from(name, 'utf8')
    const crc = crc32(data) >>> 0
    // Padding in an extra field ("FB", as PyTorchStreamWriter writes it) so the data starts on 64 bytes.
    const pad = (64 - ((offset + 30 + nameBuf.length + 4) % 64)) % 64
    const extra = Buffer.alloc(4 + pad)
    extra.write('FB', 0, 'latin1')
    extra.writeUInt16LE(pad, 2)
    // Version 2.0, no flags, stored, no date; then crc, both sizes, the name's and the extra field's length.
    const sizes = [
      [4, crc],
      [4, data.length],
      [4, data.length],
      [2, nameBuf.length],
    ]
    const local = fields([4, 0x04034b50], [2, 20], [2, 0], [2, 0], [4, 0], ...sizes, [2, extra.length])
    chunks.push(local, nameBuf, extra, data)
    // The same, made by version 2.0, with no extra field, comment, disk or attributes, and the entry's offset.
    const dir = fields(
      [4, 0x02014b50],
      [2, 20],
      [2, 20],
      [2, 0],
      [2, 0],
      [4, 0],
      ...sizes,
      [4, 0],
      [4, 0],
      [4, 0],
      [4, offset],
    )
    central.push(dir, nameBuf)
    offset += local.length + nameBuf.length + extra.length + data.length
  }
  const dirBuf = Buffer.concat(central)
  const count = entries.length
  const end = fields(
    [4, 0x06054b50],
    [2, 0],
    [2, 0],
    [2, count],
    [2, count],
    [4, dirBuf.length],
    [4, offset],
    [2, 0],
  )
  return Buffer.concat([...chunks, dirBuf, end])
}

/** The bytes of F5-TTS's `model_last.pt` at `update` (see the header comment). */
export function f5Checkpoint(update) {
  const archive = 'model_last'
  const pkl = pickleDict({
    model_state_dict: {},
    optimizer_state_dict: {},
    ema_model_state_dict: {},
    scheduler_state_dict: {},
    update,
  })
  return storedZip([
    [`${archive}/data.pkl`, pkl],
    [`${archive}/.format_version`, Buffer.from('1')],
    [`${archive}/.storage_alignment`, Buffer.from('64')],
    [`${archive}/byteorder`, Buffer.from('little')],
    [`${archive}/version`, Buffer.from('3\n')],
    [`${archive}/.data/serialization_id`, Buffer.from('1234567890123456789012345678901234567890')],
  ])
}
