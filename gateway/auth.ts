import { timingSafeEqual } from 'node:crypto'

/**
 * Resolves a bearer token to its name, comparing in constant time against every configured token (so
 * the time taken says nothing about which one, or how much, matched).
 */
export function tokenOwner(tokens: Map<string, string>, presented: string | undefined): string | null {
  if (!presented) return null
  const given = Buffer.from(presented)
  let owner: string | null = null
  for (const [name, token] of tokens) {
    const expected = Buffer.from(token)
    const same = given.length === expected.length && timingSafeEqual(given, expected)
    if (same) owner = name
  }
  return owner
}

/** `Authorization: Bearer x`, or `?token=x` (browsers' WebSocket and EventSource cannot set headers). */
export function presentedToken(
  authorization: string | undefined,
  query: string | undefined,
): string | undefined {
  const m = authorization?.match(/^Bearer\s+(\S+)$/i)
  return m?.[1] ?? query ?? undefined
}
