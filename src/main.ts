#!/usr/bin/env node
/**
 * Entry point of the `tenant-proxy` binary: hands argv, the environment, the standard streams and
 * process signals to the CLI, and exits with its code. The only module that touches `process`
 * (besides the logger, which flushes its batched lines on exit).
 */
import { runCli } from './cli/run.js'

const forcedExit: Array<() => void> = []
const stopSignal = new Promise<string>((resolve) => {
  let stopping = false
  for (const signal of ['SIGTERM', 'SIGINT'] as const) {
    process.on(signal, () => {
      // A second signal while draining means "now": skip the graceful path.
      if (stopping) {
        for (const fn of forcedExit) {
          try { fn() } catch { /* exiting anyway */ }
        }
        process.exit(130)
      }
      stopping = true
      resolve(signal)
    })
  }
})
const reloaders: Array<() => void> = []
process.on('SIGHUP', () => { for (const fn of reloaders) fn() })

const code = await runCli(process.argv.slice(2), {
  env: process.env,
  io: {
    out: (text) => { process.stdout.write(text) },
    err: (text) => { process.stderr.write(text) },
    outIsTerminal: process.stdout.isTTY === true,
    errIsTerminal: process.stderr.isTTY === true
  },
  stopSignal,
  onReload: (fn) => { reloaders.push(fn) },
  onForcedExit: (fn) => { forcedExit.push(fn) }
})
process.exitCode = code
// Let stdout drain, then leave even if a library left a handle open.
process.stdout.write('', () => process.exit(code))
