/**
 * A small seeded PRNG (mulberry32) so simulated outputs are reproducible: the same job id gives the same
 * bytes on every attempt, which keeps retries and artifact checksums stable.
 *
 * @example
 * const rand = createRng('job-42')
 * const x = rand() // 0 <= x < 1
 */
export function createRng(seed: number | string): () => number {
  let state = typeof seed === 'number' ? seed >>> 0 : hashString(seed)
  return () => {
    state = (state + 0x6d2b79f5) >>> 0
    let t = state
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

/** FNV-1a 32-bit hash of a string's UTF-16 code units; a cheap, stable seed. */
export function hashString(s: string): number {
  let h = 0x811c9dc5
  for (let i = 0; i < s.length; i++) {
    h ^= s.charCodeAt(i)
    h = Math.imul(h, 0x01000193)
  }
  return h >>> 0
}
