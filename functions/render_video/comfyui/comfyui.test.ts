import { describe, expect, it } from 'vitest'
import { artifactNames, comfyEndpoint, contentTypeOf, describeRefusal, outputFiles } from './index.ts'

/** The ComfyUI driver's pure parts; the protocol itself is tested against the stand-in in tests/engines/. */
describe('ComfyUI driver helpers', () => {
  it('keeps credentials out of the printable URL and sends them as Basic auth; a path prefix stays', () => {
    const ep = comfyEndpoint('https://ops:p%40ss@proxy.example/comfy?x=1')
    expect(ep.display).toBe('https://proxy.example/comfy')
    expect(ep.base.toString()).toBe('https://proxy.example/comfy/')
    expect(ep.headers.authorization).toBe(`Basic ${Buffer.from('ops:p@ss').toString('base64')}`)
    expect(comfyEndpoint('http://127.0.0.1:8188').headers).toEqual({})
  })

  it('finds every file of every output node: images, animated videos, VHS gifs, audio; skips text', () => {
    const files = outputFiles({
      '12': { audio: [{ filename: 'voice_00001_.flac', subfolder: '', type: 'output' }] },
      '9': {
        images: [{ filename: 'mp4_00002_.mp4', subfolder: 'eng', type: 'output' }],
        animated: [true],
      },
      '10': {
        gifs: [{ filename: 'vhs_00001.mp4', subfolder: '', type: 'output', format: 'video/h264-mp4' }],
      },
      '11': { text: ['a caption'] },
      '3': { images: [{ filename: 'preview.png', subfolder: '', type: 'temp' }] },
    })
    expect(files).toEqual([
      { node: '3', filename: 'preview.png', subfolder: '', type: 'temp' },
      { node: '9', filename: 'mp4_00002_.mp4', subfolder: 'eng', type: 'output' },
      { node: '10', filename: 'vhs_00001.mp4', subfolder: '', type: 'output' },
      { node: '12', filename: 'voice_00001_.flac', subfolder: '', type: 'output' },
    ])
  })

  it('names artifacts after the files, prefixing the node when two outputs share a name', () => {
    const f = (node: string, filename: string) => ({ node, filename, subfolder: '', type: 'output' })
    expect(
      artifactNames(
        [f('5', 'a.png'), f('6', 'a.png'), f('7', 'workflow.json'), f('8', '..hidden')],
        new Set(['workflow.json']),
      ),
    ).toEqual(['a.png', 'node6_a.png', 'node7_workflow.json', '_hidden'])
  })

  it("takes /view's content type unless it is missing or generic", () => {
    expect(contentTypeOf('x.webp', 'image/webp')).toBe('image/webp')
    expect(contentTypeOf('x.webp', 'application/octet-stream')).toBe('image/webp')
    expect(contentTypeOf('x.mp4', null)).toBe('video/mp4')
    expect(contentTypeOf('x.bin', null)).toBe('application/octet-stream')
  })

  it('describes the old ComfyUI refusal shape too', () => {
    expect(describeRefusal({ error: 'no prompt', node_errors: [] })).toBe(
      'ComfyUI refused the workflow: no prompt [error]',
    )
  })
})
