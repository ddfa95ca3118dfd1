import { describe, expect, it } from 'vitest'
import { parseYaml, parseYamlDocuments, YamlLiteError } from './yaml-lite.ts'

describe('yaml-lite', () => {
  it('reads mappings, sequences, compact sequences and scalars', () => {
    const doc = parseYaml(
      [
        'a: 1',
        'b: true',
        "c: 'it''s'",
        'd: "x\\ty"',
        'e:',
        '- one',
        '- k: v',
        '  k2: 2.5',
        'f:',
        '  g: null',
        '  h: [gpu, "b c", 3]',
        '  i: {}',
        'url: http://minio:9000 # comment',
        'ports:',
        '  - 127.0.0.1:9400:9400/tcp',
      ].join('\n'),
    )
    expect(doc).toEqual({
      a: 1,
      b: true,
      c: "it's",
      d: 'x\ty',
      e: ['one', { k: 'v', k2: 2.5 }],
      f: { g: null, h: ['gpu', 'b c', 3], i: {} },
      url: 'http://minio:9000',
      ports: ['127.0.0.1:9400:9400/tcp'],
    })
  })

  it('continues plain scalars and reads block scalars with their comments', () => {
    const doc = parseYaml(
      [
        'test:',
        '- CMD',
        "- import urllib.request; urlopen('http://127.0.0.1:8188/x',",
        '  timeout=4)',
        'script: |',
        '  # not a comment',
        '  echo hi',
        '',
        'folded: >-',
        '  a',
        '  b',
        'after: x',
      ].join('\n'),
    )
    expect(doc).toEqual({
      test: ['CMD', "import urllib.request; urlopen('http://127.0.0.1:8188/x', timeout=4)"],
      script: '# not a comment\necho hi\n',
      folded: 'a b',
      after: 'x',
    })
  })

  it('splits documents and refuses what it does not understand', () => {
    expect(parseYamlDocuments('---\na: 1\n---\n# only a comment\n---\nb: 2\n')).toEqual([{ a: 1 }, { b: 2 }])
    expect(() => parseYaml('a: &x 1\nb: *x\n')).toThrow(YamlLiteError)
    expect(() => parseYaml('a: 1\na: 2\n')).toThrow(/duplicate/)
  })
})
