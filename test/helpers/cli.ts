/**
 * Runs the built CLI (dist/) as a real process, as users and scripts do.
 */
import { execFile } from 'node:child_process'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

export const CLI = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../dist/src/main.js')

/** Exit code and output of one CLI run. */
export interface CliResult { code: number, stdout: string, stderr: string }

/** Runs `tenant-proxy ...args` with only the given environment (plus PATH). */
export async function runCli (args: readonly string[], env: Record<string, string> = {}): Promise<CliResult> {
  return await new Promise((resolve) => {
    execFile(process.execPath, [CLI, ...args], { env: { PATH: process.env.PATH ?? '', ...env }, timeout: 60_000 }, (err, stdout, stderr) => {
      const code = err === null ? 0 : typeof err.code === 'number' ? err.code : 1
      resolve({ code, stdout, stderr })
    })
  })
}
