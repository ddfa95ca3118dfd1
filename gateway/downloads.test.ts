import { describe, expect, it } from 'vitest'
import { artifactPathOf, attachmentDisposition, byteRange } from './downloads.ts'

describe('artifactPathOf', () => {
  it.each([
    ['/api/jobs/j1/artifacts/a.bin', 'a.bin'],
    ['/api/jobs/j1/artifacts/sub%20dir/%C3%BC.bin', 'sub dir/ü.bin'],
    ['/api/jobs/%6A1/artifacts/a.bin', 'a.bin'],
    ['/api/jobs/j1/artifacts/a%2Fb', 'a/b'],
  ])('%s -> %s', (pathname, rel) => expect(artifactPathOf(pathname)).toBe(rel))
  it.each(['%ZZ', 'a%2', '%E0%A4%A', '%C0%AF', '%FF', 'ok/%', '%D8%00'])('malformed %s -> null', (rel) =>
    expect(artifactPathOf(`/api/jobs/j1/artifacts/${rel}`)).toBeNull(),
  )
})

describe('byteRange (a 20-byte file)', () => {
  it.each([
    ['bytes=0-3', 0, 3],
    ['BYTES=0-3', 0, 3],
    ['bytes=5-', 5, 19],
    ['bytes=-4', 16, 19],
    ['bytes=-100', 0, 19],
    ['bytes=18-9999', 18, 19],
    ['bytes= 2-3 ', 2, 3],
  ])('%s: bytes %i to %i', (header, start, end) =>
    expect(byteRange(header, 20)).toEqual({ kind: 'partial', start, end }),
  )
  // Multiple ranges and other units are not refused: the whole file is served instead.
  it.each([undefined, 'bytes=0-1,4-5', 'items=0-3'])('%s: the whole file', (header) =>
    expect(byteRange(header, 20)).toEqual({ kind: 'full' }),
  )
  it.each([
    'bytes=20-',
    'bytes=99999999-',
    'bytes=5-2',
    'bytes=-0',
    'bytes=',
    'bytes=abc',
    'bytes=1-2-3',
    'bytes=0-1,x',
    'bytes=1.5-2',
    'garbage',
  ])('%s: unsatisfiable', (header) => expect(byteRange(header, 20)).toEqual({ kind: 'unsatisfiable' }))

  it('has nothing to give from an empty file', () => {
    expect(byteRange('bytes=0-', 0)).toEqual({ kind: 'unsatisfiable' })
    expect(byteRange('bytes=-5', 0)).toEqual({ kind: 'unsatisfiable' })
    expect(byteRange(undefined, 0)).toEqual({ kind: 'full' })
  })
})

describe('attachmentDisposition', () => {
  it('keeps any name valid in a header', () => {
    expect(attachmentDisposition('video.avi')).toBe(
      `attachment; filename="video.avi"; filename*=UTF-8''video.avi`,
    )
    const odd = attachmentDisposition('fox "🦊"\r\n.bin')
    expect(odd).toMatch(/^attachment; filename="fox ____+\.bin"; filename\*=UTF-8''/)
    expect(() => new Headers({ 'content-disposition': odd })).not.toThrow()
  })
})
