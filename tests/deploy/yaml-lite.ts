/**
 * A small YAML reader for the deployment tests, so they need no YAML package. It reads the block style that
 * `docker-compose config` prints and that our Kubernetes manifests use: mappings, sequences (also `- key: v`),
 * plain and quoted scalars (plain ones may continue on more-indented lines), flow collections on one line
 * (`[a, "b"]`, `{}`), block scalars (`|`, `>`, with `-`/`+`), comments and `---` document separators.
 * Anchors, aliases, tags and complex keys are refused with an error rather than misread.
 *
 * @example
 *   parseYamlDocuments('a: 1\n---\nb: [x, y]\n') // [{ a: 1 }, { b: ['x', 'y'] }]
 */

export type YamlValue = string | number | boolean | null | YamlValue[] | { [key: string]: YamlValue }
export type YamlMap = { [key: string]: YamlValue }

interface Line {
  indent: number
  text: string
  no: number
}

export class YamlLiteError extends Error {
  override name = 'YamlLiteError'
}

/** Parses every document of a multi-document stream; empty documents are dropped. */
export function parseYamlDocuments(source: string): YamlValue[] {
  const docs: string[][] = [[]]
  for (const raw of source.replace(/\r\n?/g, '\n').split('\n')) {
    if (/^---(\s|$)/.test(raw)) docs.push([])
    else if (/^\.\.\.(\s|$)/.test(raw)) docs.push([])
    else docs[docs.length - 1]?.push(raw)
  }
  const out: YamlValue[] = []
  for (const doc of docs) {
    const value = parseDocument(doc)
    if (value !== undefined) out.push(value)
  }
  return out
}

/** Parses a single document. */
export function parseYaml(source: string): YamlValue {
  const docs = parseYamlDocuments(source)
  if (docs.length !== 1) throw new YamlLiteError(`expected one document, found ${docs.length}`)
  return docs[0] as YamlValue
}

function parseDocument(rawLines: string[]): YamlValue | undefined {
  const parser = new Parser(rawLines)
  if (parser.done()) return undefined
  const value = parser.parseBlock(parser.peek().indent)
  if (!parser.done()) throw parser.error('unexpected content', parser.peek())
  return value
}

class Parser {
  private readonly raw: string[]
  private pos = 0

  constructor(raw: string[]) {
    this.raw = raw
    this.skipBlank()
  }

  done(): boolean {
    return this.pos >= this.raw.length
  }

  peek(): Line {
    const text = this.raw[this.pos] ?? ''
    const indent = text.length - text.trimStart().length
    return { indent, text: stripComment(text.trim()), no: this.pos + 1 }
  }

  error(message: string, line: Line): YamlLiteError {
    return new YamlLiteError(`line ${line.no}: ${message}: ${line.text}`)
  }

  private skipBlank(): void {
    while (this.pos < this.raw.length) {
      const t = (this.raw[this.pos] ?? '').trim()
      if (t === '' || t.startsWith('#')) this.pos++
      else break
    }
  }

  private next(): void {
    this.pos++
    this.skipBlank()
  }

  parseBlock(indent: number): YamlValue {
    const line = this.peek()
    if (line.text.startsWith('- ') || line.text === '-') return this.parseSeq(indent)
    if (splitKey(line.text)) return this.parseMap(indent)
    // A lone scalar document or value.
    this.next()
    return this.scalarWithContinuation(line.text, indent - 1)
  }

  private parseSeq(indent: number): YamlValue[] {
    const items: YamlValue[] = []
    while (!this.done()) {
      const line = this.peek()
      if (line.indent < indent) break
      if (line.indent > indent) throw this.error('bad indentation', line)
      if (!(line.text.startsWith('- ') || line.text === '-')) break
      const rest = line.text === '-' ? '' : line.text.slice(2).trimStart()
      const itemIndent = indent + (line.text.length - rest.length)
      if (rest === '') {
        this.next()
        items.push(this.done() || this.peek().indent <= indent ? null : this.parseBlock(this.peek().indent))
      } else if (rest.startsWith('- ')) {
        throw this.error('nested sequence on one line is not supported', line)
      } else if (splitKey(rest)) {
        // `- key: value` starts a mapping whose keys sit at itemIndent.
        this.raw[this.pos] = ' '.repeat(itemIndent) + rest
        items.push(this.parseMap(itemIndent))
      } else {
        this.pos++
        items.push(this.valueAfterKey(rest, indent, line))
      }
    }
    return items
  }

  private parseMap(indent: number): YamlMap {
    const map: YamlMap = {}
    while (!this.done()) {
      const line = this.peek()
      if (line.indent < indent) break
      if (line.indent > indent) throw this.error('bad indentation', line)
      const kv = splitKey(line.text)
      if (!kv) break
      const [key, rest] = kv
      if (key === '<<') throw this.error('merge keys are not supported', line)
      if (Object.hasOwn(map, key)) throw this.error(`duplicate key "${key}"`, line)
      if (rest === '') this.next()
      else this.pos++
      if (rest === '') {
        if (this.done() || this.peek().indent < indent) map[key] = null
        else if (this.peek().indent === indent) {
          // Compact sequence under a key: `key:\n- a` at the same indentation.
          const t = this.peek().text
          map[key] = t.startsWith('- ') || t === '-' ? this.parseSeq(indent) : null
        } else map[key] = this.parseBlock(this.peek().indent)
      } else {
        map[key] = this.valueAfterKey(rest, indent, line)
      }
    }
    return map
  }

  /** Called with the position just past the key's line, comments and blank lines not yet skipped. */
  private valueAfterKey(rest: string, parentIndent: number, line: Line): YamlValue {
    if (/^[|>][-+]?\d*$/.test(rest)) return this.blockScalar(rest, parentIndent)
    if (!(rest.startsWith('"') || rest.startsWith("'"))) this.skipBlank()
    if (rest.startsWith('&') || rest.startsWith('*') || rest.startsWith('!'))
      throw this.error('anchors, aliases and tags are not supported', line)
    return this.scalarWithContinuation(rest, parentIndent)
  }

  /** A plain scalar may go on over following lines indented deeper than its parent. */
  private scalarWithContinuation(first: string, parentIndent: number): YamlValue {
    if (first.startsWith('[') || first.startsWith('{')) return parseFlow(first)
    if (first.startsWith('"') || first.startsWith("'")) {
      let text = first
      while (!quotedComplete(text) && !this.done()) {
        text += ` ${(this.raw[this.pos] ?? '').trim()}`
        this.pos++
      }
      this.skipBlank()
      return parseQuoted(text)
    }
    let text = first
    while (!this.done()) {
      const line = this.peek()
      if (line.indent <= parentIndent || line.text.startsWith('- ') || splitKey(line.text)) break
      text += ` ${line.text}`
      this.next()
    }
    return plainScalar(text)
  }

  private blockScalar(header: string, parentIndent: number): string {
    const literal = header.startsWith('|')
    const chomp = header.includes('-') ? 'strip' : header.includes('+') ? 'keep' : 'clip'
    const lines: string[] = []
    let blockIndent = -1
    // Block scalars are read from the raw lines: blank lines and `#` belong to the content.
    while (this.pos < this.raw.length) {
      const raw = this.raw[this.pos] ?? ''
      const indent = raw.length - raw.trimStart().length
      if (raw.trim() === '') {
        lines.push('')
        this.pos++
        continue
      }
      if (blockIndent < 0) blockIndent = indent
      if (indent < blockIndent || indent <= parentIndent) break
      lines.push(raw.slice(blockIndent))
      this.pos++
    }
    this.skipBlank()
    let trailing = 0
    while (lines.length > 0 && lines[lines.length - 1] === '') {
      lines.pop()
      trailing++
    }
    let body = literal ? lines.join('\n') : foldLines(lines)
    if (chomp === 'clip' && lines.length > 0) body += '\n'
    if (chomp === 'keep') body += '\n'.repeat(trailing + 1)
    return body
  }
}

function foldLines(lines: string[]): string {
  let out = ''
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i] ?? ''
    if (i === 0) out = line
    else if (line === '' || /^\s/.test(line)) out += `\n${line}`
    else out += (lines[i - 1] === '' ? '' : ' ') + line
  }
  return out
}

/** `key: rest` (rest may be empty); null when the text is not a mapping entry. */
function splitKey(text: string): [string, string] | null {
  if (text.startsWith('"') || text.startsWith("'")) {
    const quote = text[0] as string
    let i = 1
    while (i < text.length) {
      if (text[i] === '\\' && quote === '"') i += 2
      else if (text[i] === quote && quote === "'" && text[i + 1] === "'") i += 2
      else if (text[i] === quote) break
      else i++
    }
    const after = text.slice(i + 1)
    const m = /^\s*:(\s+(.*))?$/.exec(after)
    if (!m) return null
    return [parseQuoted(text.slice(0, i + 1)) as string, (m[2] ?? '').trim()]
  }
  if (text.startsWith('[') || text.startsWith('{') || text.startsWith('- ')) return null
  const m = /^([^\s#][^:]*?)\s*:(?:\s+(.*))?$/.exec(text)
  if (!m) return null
  if (text.startsWith('? ')) throw new YamlLiteError(`complex keys are not supported: ${text}`)
  return [m[1] as string, (m[2] ?? '').trim()]
}

function stripComment(text: string): string {
  let quote: string | null = null
  for (let i = 0; i < text.length; i++) {
    const c = text[i]
    if (quote) {
      if (c === '\\' && quote === '"') i++
      else if (c === quote) quote = null
    } else if (c === '"' || c === "'") {
      if (i === 0 || /[\s[{,:-]/.test(text[i - 1] ?? '')) quote = c
    } else if (c === '#' && (i === 0 || /\s/.test(text[i - 1] ?? ''))) {
      return text.slice(0, i).trimEnd()
    }
  }
  return text
}

function quotedComplete(text: string): boolean {
  const quote = text[0]
  for (let i = 1; i < text.length; i++) {
    if (text[i] === '\\' && quote === '"') i++
    else if (text[i] === quote) {
      if (quote === "'" && text[i + 1] === "'") i++
      else return true
    }
  }
  return false
}

function parseQuoted(text: string): string {
  const quote = text[0]
  const end = text.lastIndexOf(quote ?? '')
  const body = text.slice(1, end)
  if (quote === "'") return body.replace(/''/g, "'")
  return body.replace(/\\(["\\/bfnrt]|u[0-9a-fA-F]{4})/g, (_, e: string) => {
    const map: Record<string, string> = {
      b: '\b',
      f: '\f',
      n: '\n',
      r: '\r',
      t: '\t',
      '"': '"',
      '\\': '\\',
      '/': '/',
    }
    return e.startsWith('u') ? String.fromCharCode(Number.parseInt(e.slice(1), 16)) : (map[e] ?? e)
  })
}

function plainScalar(text: string): YamlValue {
  const t = text.trim()
  if (t === '' || t === '~' || t === 'null' || t === 'Null' || t === 'NULL') return null
  if (/^(true|True|TRUE)$/.test(t)) return true
  if (/^(false|False|FALSE)$/.test(t)) return false
  if (/^[-+]?(0|[1-9]\d*)$/.test(t)) return Number(t)
  if (/^[-+]?(\d+\.\d*|\.\d+|\d+)([eE][-+]?\d+)?$/.test(t)) return Number(t)
  return t
}

/** One-line flow collections: `[a, "b", {c: d}]`, `{a: 1, b: [x]}`. */
function parseFlow(text: string): YamlValue {
  let i = 0
  const ws = () => {
    while (i < text.length && /\s/.test(text[i] ?? '')) i++
  }
  const scalar = (stops: string): YamlValue => {
    ws()
    const c = text[i]
    if (c === '"' || c === "'") {
      const start = i
      i++
      while (i < text.length) {
        if (text[i] === '\\' && c === '"') i += 2
        else if (text[i] === c && c === "'" && text[i + 1] === "'") i += 2
        else if (text[i] === c) break
        else i++
      }
      i++
      return parseQuoted(text.slice(start, i))
    }
    if (c === '[' || c === '{') return value()
    const start = i
    while (i < text.length && !stops.includes(text[i] ?? '')) i++
    return plainScalar(text.slice(start, i))
  }
  const value = (): YamlValue => {
    ws()
    if (text[i] === '[') {
      i++
      const arr: YamlValue[] = []
      ws()
      if (text[i] === ']') {
        i++
        return arr
      }
      for (;;) {
        arr.push(scalar(',]'))
        ws()
        if (text[i] === ',') i++
        else if (text[i] === ']') {
          i++
          return arr
        } else throw new YamlLiteError(`bad flow sequence: ${text}`)
      }
    }
    if (text[i] === '{') {
      i++
      const map: YamlMap = {}
      ws()
      if (text[i] === '}') {
        i++
        return map
      }
      for (;;) {
        const key = scalar(':,}')
        ws()
        if (text[i] !== ':') throw new YamlLiteError(`bad flow mapping: ${text}`)
        i++
        map[String(key)] = scalar(',}')
        ws()
        if (text[i] === ',') i++
        else if (text[i] === '}') {
          i++
          return map
        } else throw new YamlLiteError(`bad flow mapping: ${text}`)
      }
    }
    return scalar('')
  }
  const result = value()
  ws()
  if (i < text.length) throw new YamlLiteError(`trailing text after flow collection: ${text}`)
  return result
}

/** Reads `obj.a.b` safely; undefined when any step is missing. */
export function get(value: YamlValue | undefined, ...path: (string | number)[]): YamlValue | undefined {
  let cur: YamlValue | undefined = value
  for (const step of path) {
    if (cur === null || cur === undefined || typeof cur !== 'object') return undefined
    cur = Array.isArray(cur) ? cur[step as number] : (cur as YamlMap)[String(step)]
  }
  return cur
}

export function isMap(value: YamlValue | undefined): value is YamlMap {
  return value !== null && typeof value === 'object' && !Array.isArray(value)
}
