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
    [undefined, { kind: 'full' }],
    ['bytes=0-3', { kind: 'partial', start: 0, end: 3 }],
    ['BYTES=0-3', { kind: 'partial', start: 0, end: 3 }],
    ['bytes=5-', { kind: 'partial', start: 5, end: 19 }],
    ['bytes=-4', { kind: 'partial', start: 16, end: 19 }],
    ['bytes=-100', { kind: 'partial', start: 0, end: 19 }],
    ['bytes=18-9999', { kind: 'partial', start: 18, end: 19 }],
    ['bytes= 2-3 ', { kind: 'partial', start: 2, end: 3 }],
    ['bytes=0-1,4-5', { kind: 'full' }],
    ['items=0-3', { kind: 'full' }],
    ['bytes=20-', { kind: 'unsatisfiable' }],
    ['bytes=99999999-', { kind: 'unsatisfiable' }],
    ['bytes=5-2', { kind: 'unsatisfiable' }],
    ['bytes=-0', { kind: 'unsatisfiable' }],
    ['bytes=', { kind: 'unsatisfiable' }],
    ['bytes=abc', { kind: 'unsatisfiable' }],
    ['bytes=1-2-3', { kind: 'unsatisfiable' }],
    ['bytes=0-1,x', { kind: 'unsatisfiable' }],
    ['bytes=1.5-2', { kind: 'unsatisfiable' }],
    ['garbage', { kind: 'unsatisfiable' }],
  ])('%s', (header, answer) => expect(byteRange(header, 20)).toEqual(answer))

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
