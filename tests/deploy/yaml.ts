/** YAML for the deployment tests, read with the `yaml` package, and typed walks through what it reads. */
import { parse, parseAllDocuments } from 'yaml'

/** A parsed YAML value: what `docker-compose config` prints and our Kubernetes manifests hold. */
export type YamlValue = string | number | boolean | null | YamlValue[] | { [key: string]: YamlValue }
export type YamlMap = { [key: string]: YamlValue }

/** Parses one YAML document (duplicate keys, anchors misused and other errors throw). */
export const parseYaml = (source: string): YamlValue => parse(source) as YamlValue

/**
 * Parses every document of a multi-document stream; empty documents (a `---` with only comments) are dropped.
 *
 * @example
 *   parseYamlDocuments('a: 1\n---\nb: [x, y]\n') // [{ a: 1 }, { b: ['x', 'y'] }]
 */
export function parseYamlDocuments(source: string): YamlValue[] {
  return parseAllDocuments(source).flatMap((doc) => {
    const [error] = doc.errors
    if (error) throw error
    const value = doc.toJS() as YamlValue
    return value === null ? [] : [value]
  })
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
