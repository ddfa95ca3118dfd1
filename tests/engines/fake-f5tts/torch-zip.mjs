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

/** A stored (method 0) zip of `entries` ([name, Buffer][]), data aligned to 64 bytes as torch's writer does. */
export function storedZip(entries) {
  const chunks = []
  const central = []
  let offset = 0
  for (const [name, data] of entries) {
    const nameBuf = Buffer.from(name, 'utf8')
    const crc = crc32(data) >>> 0
    // Padding in an extra field ("FB", as PyTorchStreamWriter writes it) so the data starts on 64 bytes.
    const headerLen = 30 + nameBuf.length
    let pad = (64 - ((offset + headerLen + 4) % 64)) % 64
    const extra = Buffer.alloc(4 + pad)
    extra.write('FB', 0, 'latin1')
    extra.writeUInt16LE(pad, 2)
    pad = extra.length
    const local = Buffer.alloc(30)
    local.writeUInt32LE(0x04034b50, 0)
    local.writeUInt16LE(20, 4)
    local.writeUInt16LE(0, 6)
    local.writeUInt16LE(0, 8)
    local.writeUInt32LE(0, 10)
    local.writeUInt32LE(crc, 14)
    local.writeUInt32LE(data.length, 18)
    local.writeUInt32LE(data.length, 22)
    local.writeUInt16LE(nameBuf.length, 26)
    local.writeUInt16LE(extra.length, 28)
    chunks.push(local, nameBuf, extra, data)
    const dir = Buffer.alloc(46)
    dir.writeUInt32LE(0x02014b50, 0)
    dir.writeUInt16LE(20, 4)
    dir.writeUInt16LE(20, 6)
    dir.writeUInt16LE(0, 8)
    dir.writeUInt16LE(0, 10)
    dir.writeUInt32LE(0, 12)
    dir.writeUInt32LE(crc, 16)
    dir.writeUInt32LE(data.length, 20)
    dir.writeUInt32LE(data.length, 24)
    dir.writeUInt16LE(nameBuf.length, 28)
    dir.writeUInt32LE(offset, 42)
    central.push(dir, nameBuf)
    offset += 30 + nameBuf.length + extra.length + data.length
  }
  const dirBuf = Buffer.concat(central)
  const end = Buffer.alloc(22)
  end.writeUInt32LE(0x06054b50, 0)
  end.writeUInt16LE(entries.length, 8)
  end.writeUInt16LE(entries.length, 10)
  end.writeUInt32LE(dirBuf.length, 12)
  end.writeUInt32LE(offset, 16)
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
