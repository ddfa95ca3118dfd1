import { existsSync } from 'node:fs'
import path from 'node:path'
import { describe, expect, it } from 'vitest'
import { readRepoFile, repoRoot } from './helpers.ts'

// Docker has no engine on the development machines, so the Dockerfiles are checked statically here; the
// real build runs in CI or on the GPU box (docs/deploy.md).

interface Instruction {
  op: string
  args: string
  stage: number
}

interface Stage {
  index: number
  image: string
  name: string | undefined
}

function parseDockerfile(text: string): {
  instructions: Instruction[]
  stages: Stage[]
  globalArgs: Map<string, string>
} {
  const logical: string[] = []
  let current = ''
  for (const raw of text.split('\n')) {
    const line = raw.trimEnd()
    if (current === '' && (line.trim() === '' || line.trim().startsWith('#'))) continue
    if (line.trim().startsWith('#')) continue
    if (line.endsWith('\\')) current += `${line.slice(0, -1)} `
    else {
      logical.push(current + line)
      current = ''
    }
  }
  const instructions: Instruction[] = []
  const stages: Stage[] = []
  const globalArgs = new Map<string, string>()
  for (const l of logical) {
    const m = /^\s*([A-Za-z]+)\s+(.*)$/.exec(l)
    if (!m) continue
    const op = (m[1] as string).toUpperCase()
    const args = (m[2] as string).trim()
    if (op === 'FROM') {
      const [image, as, name] = args.split(/\s+/)
      stages.push({
        index: stages.length,
        image: image as string,
        name: as?.toUpperCase() === 'AS' ? name : undefined,
      })
    } else if (op === 'ARG' && stages.length === 0) {
      const [k, v] = args.split('=')
      globalArgs.set(k as string, v ?? '')
    }
    instructions.push({ op, args, stage: stages.length - 1 })
  }
  return { instructions, stages, globalArgs }
}

const expand = (s: string, args: Map<string, string>): string =>
  s.replace(
    /\$\{(\w+)\}|\$(\w+)/g,
    (_, a: string | undefined, b: string | undefined) => args.get((a ?? b) as string) ?? '',
  )

function finalStage(parsed: ReturnType<typeof parseDockerfile>) {
  const last = parsed.stages.length - 1
  const ops = parsed.instructions.filter((i) => i.stage === last)
  const one = (op: string) => ops.filter((i) => i.op === op).at(-1)?.args
  return { stage: parsed.stages[last] as Stage, ops, one }
}

/** Paths a COPY without --from takes from the build context. */
function contextSources(parsed: ReturnType<typeof parseDockerfile>): string[] {
  return parsed.instructions
    .filter((i) => i.op === 'COPY' && !i.args.includes('--from='))
    .flatMap((i) => {
      const parts = i.args.split(/\s+/).filter((p) => !p.startsWith('--'))
      return parts.slice(0, -1)
    })
}

const dockerignore = readRepoFile('.dockerignore')
  .split('\n')
  .map((l) => l.trim())
  .filter((l) => l && !l.startsWith('#'))

function ignored(p: string): boolean {
  return dockerignore.some((pattern) => {
    const re = new RegExp(
      `^${pattern
        .replace(/[.+^${}()|[\]\\]/g, '\\$&')
        .replace(/\*\*\//g, '(.*/)?')
        .replace(/\*/g, '[^/]*')}(/.*)?$`,
    )
    return re.test(p)
  })
}

for (const [file, entry, port] of [
  ['cuda/Dockerfile', 'dist/gpu-host/main.js', 9464],
  ['cuda/Dockerfile.gateway', 'dist/gateway/main.js', 8080],
] as const) {
  describe(file, () => {
    const parsed = parseDockerfile(readRepoFile(file))
    const final = finalStage(parsed)

    it('builds in stages: npm ci and the build script, then a runtime stage', () => {
      expect(parsed.stages.length).toBeGreaterThanOrEqual(3)
      const runs = parsed.instructions.filter((i) => i.op === 'RUN').map((i) => i.args)
      expect(runs.some((r) => r.includes('npm ci') && !r.includes('--omit=dev'))).toBe(true)
      expect(runs.some((r) => r.includes('npm ci --omit=dev') || r.includes('npm prune --omit=dev'))).toBe(
        true,
      )
      expect(runs.some((r) => r.includes('node scripts/build.mjs'))).toBe(true)
    })

    it('pins every base image to a tag', () => {
      for (const stage of parsed.stages) {
        const image = expand(stage.image, parsed.globalArgs)
        if (parsed.stages.some((s) => s.name === image)) continue
        expect(image, stage.image).toMatch(/^[\w./-]+:[\w.-]+$/)
        expect(image).not.toMatch(/:latest$/)
      }
    })

    it('copies only from earlier stages or pinned images', () => {
      for (const i of parsed.instructions.filter((x) => x.op === 'COPY' && x.args.includes('--from='))) {
        const from = /--from=(\S+)/.exec(i.args)?.[1] as string
        const earlier = parsed.stages.slice(0, i.stage).some((s) => s.name === from)
        expect(earlier || /:[\w.-]+$/.test(from), `COPY --from=${from}`).toBe(true)
      }
    })

    it('takes from the build context only files that exist and .dockerignore keeps', () => {
      for (const src of contextSources(parsed)) {
        if (src === '.') continue
        expect(existsSync(path.join(repoRoot, src)), src).toBe(true)
        expect(ignored(src), `${src} is excluded by .dockerignore`).toBe(false)
      }
    })

    it('runs compiled JavaScript as a non-root user under tini, with a healthcheck', () => {
      const user = final.one('USER')
      expect(user).toBeDefined()
      expect(user).not.toMatch(/^(root|0)(:|$)/)
      expect(final.one('ENTRYPOINT')).toBe('["tini", "--"]')
      expect(final.one('CMD')).toBe(`["node", "${entry}"]`)
      expect(final.ops.map((o) => o.args).join('\n')).not.toMatch(/\btsx\b/)
      const health = final.one('HEALTHCHECK') ?? ''
      expect(health).toContain(`http://127.0.0.1:${port}/healthz`)
      // The entry point is what tsconfig.build.json emits for an existing source file.
      expect(existsSync(path.join(repoRoot, entry.replace(/^dist\//, '').replace(/\.js$/, '.ts')))).toBe(true)
    })
  })
}

describe('cuda/Dockerfile specifics', () => {
  const parsed = parseDockerfile(readRepoFile('cuda/Dockerfile'))
  const text = readRepoFile('cuda/Dockerfile')

  it('runs on the CUDA runtime image and compiles the CUDA programs in the devel image', () => {
    const final = finalStage(parsed)
    expect(expand(final.stage.image, parsed.globalArgs)).toMatch(/^nvidia\/cuda:[\d.]+-runtime-ubuntu[\d.]+$/)
    expect(
      parsed.stages.some((s) => /^nvidia\/cuda:[\d.]+-devel-/.test(expand(s.image, parsed.globalArgs))),
    ).toBe(true)
    expect(text).toMatch(/COPY --from=cuda-build \/out\/probe \/out\/workload \/opt\/gpu-jobs\/bin\//)
    expect(text).toMatch(/COPY --from=nodejs \/usr\/local\/bin\/node \/usr\/local\/bin\/node/)
  })

  it('installs kohya and F5-TTS only on request, at pinned commits', () => {
    expect(text).toMatch(/^ARG INSTALL_KOHYA=false$/m)
    expect(text).toMatch(/^ARG INSTALL_F5TTS=false$/m)
    expect(text).toMatch(/^ARG KOHYA_COMMIT=48d368f[0-9a-f]{33}$/m)
    expect(text).toMatch(/^ARG F5TTS_COMMIT=2ae2c9b[0-9a-f]{33}$/m)
    expect(text).toMatch(/if \[ "\$INSTALL_KOHYA" = true \]/)
    expect(text).toMatch(/if \[ "\$INSTALL_F5TTS" = true \]/)
  })
})

describe('cuda/Dockerfile engines', () => {
  const text = readRepoFile('cuda/Dockerfile')
  it('sets KOHYA_DIR, F5TTS_DIR and their Pythons to where it installs the engines', () => {
    // The checkout dir of the RUN step that clones each engine's repository.
    const installDir = (repoArg: string) =>
      /dir=(\S+);/.exec(text.split(/\nRUN /).find((step) => step.includes(`"$${repoArg}"`)) ?? '')?.[1]
    const kohya = installDir('KOHYA_REPO')
    const f5tts = installDir('F5TTS_REPO')
    expect(kohya).toBe('/opt/engines/sd-scripts')
    expect(f5tts).toBe('/opt/engines/F5-TTS')
    expect(text).toMatch(new RegExp(`^\\s+KOHYA_DIR=${kohya} \\\\$`, 'm'))
    expect(text).toMatch(new RegExp(`^\\s+KOHYA_PYTHON=${kohya}/\\.venv/bin/python \\\\$`, 'm'))
    expect(text).toMatch(new RegExp(`^\\s+F5TTS_DIR=${f5tts} \\\\$`, 'm'))
    expect(text).toMatch(new RegExp(`^\\s+F5TTS_PYTHON=${f5tts}/\\.venv/bin/python \\\\$`, 'm'))
    // The old name, renamed on main: nothing may still set or read it.
    expect(text).not.toContain('KOHYA_SD_SCRIPTS_DIR')
  })

  it('keeps the hub cache on the models volume and offline', () => {
    expect(text).toMatch(/^\s+HF_HOME=\/opt\/models\/\S+ \\$/m)
    expect(text).toMatch(/^\s+HF_HUB_OFFLINE=1 \\$/m)
  })
})

describe('.dockerignore', () => {
  it('keeps secrets, dependencies and build output out of the build context', () => {
    for (const p of ['.env', '.git', 'node_modules', 'dist', 'data', 'functions/node_modules']) {
      expect(ignored(p), p).toBe(true)
    }
    for (const p of [
      'package.json',
      'package-lock.json',
      'schema/config.ts',
      'cuda/probe.cu',
      'scripts/build.mjs',
    ]) {
      expect(ignored(p), p).toBe(false)
    }
  })
})
