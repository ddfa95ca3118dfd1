import { execFile } from 'node:child_process'
import { accessSync, constants, readFileSync } from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

/** The repository root (tests/deploy/../..). */
export const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..')

export const readRepoFile = (relative: string): string => readFileSync(path.join(repoRoot, relative), 'utf8')

/** The absolute path of an executable on PATH, or undefined. */
export function which(name: string, envPath = process.env.PATH ?? ''): string | undefined {
  for (const dir of envPath.split(path.delimiter)) {
    if (!dir) continue
    const candidate = path.join(dir, name)
    try {
      accessSync(candidate, constants.X_OK)
      return candidate
    } catch {
      // not here
    }
  }
  return undefined
}

export interface RunResult {
  code: number | null
  signal: NodeJS.Signals | null
  stdout: string
  stderr: string
}

/** Runs a command asynchronously and always resolves, whatever its exit status. */
export function run(
  file: string,
  args: string[],
  options: { cwd?: string; env?: NodeJS.ProcessEnv; timeoutMs?: number } = {},
): Promise<RunResult> {
  return new Promise((resolve) => {
    execFile(
      file,
      args,
      {
        cwd: options.cwd ?? repoRoot,
        env: options.env ?? process.env,
        timeout: options.timeoutMs ?? 120_000,
        maxBuffer: 32 * 1024 * 1024,
      },
      (error, stdout, stderr) => {
        const err = error as
          | (NodeJS.ErrnoException & { code?: number | string; signal?: NodeJS.Signals })
          | null
        const code = err ? (typeof err.code === 'number' ? err.code : null) : 0
        resolve({ code, signal: err?.signal ?? null, stdout: String(stdout), stderr: String(stderr) })
      },
    )
  })
}

/** Names documented in an env file, set (`NAME=`) or shown commented out (`# NAME=`). */
export function documentedEnvNames(envFile: string): Set<string> {
  const names = new Set<string>()
  for (const m of envFile.matchAll(/^(?:#\s*)?([A-Z][A-Z0-9_]*)=/gm)) names.add(m[1] as string)
  return names
}

/** Values actually set (uncommented) in an env file. */
export function envFileValues(envFile: string): Map<string, string> {
  const values = new Map<string, string>()
  for (const m of envFile.matchAll(/^([A-Z][A-Z0-9_]*)=(.*)$/gm))
    values.set(m[1] as string, (m[2] as string).trim())
  return values
}

/** Seconds in a Go/Compose duration such as `90s`, `1m30s`, `1h`, `500ms`. */
export function durationSeconds(text: string): number {
  const re = /(\d+(?:\.\d+)?)(h|ms|us|m|s)/g
  let total = 0
  let consumed = 0
  for (const m of text.matchAll(re)) {
    const n = Number(m[1])
    const unit = m[2]
    total +=
      unit === 'h' ? n * 3600 : unit === 'm' ? n * 60 : unit === 's' ? n : unit === 'ms' ? n / 1000 : n / 1e6
    consumed += m[0].length
  }
  if (consumed !== text.length || consumed === 0) throw new Error(`not a duration: ${text}`)
  return total
}
