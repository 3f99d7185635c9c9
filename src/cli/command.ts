/**
 * The small command framework of the `tenant-proxy` CLI: each command declares its options for
 * node:util parseArgs, a usage line and help text, and a run function that gets a context.
 */
import { parseArgs, type ParseArgsConfig } from 'node:util'
import type { Config } from '../config/load.js'
import { tpError } from '../errors.js'
import type { RegistryConnection } from '../registry/connect.js'

/** Where a command writes; tests pass buffers, main passes the process streams. */
export interface CliIo {
  out (text: string): void
  err (text: string): void
  /** True when `out` is a terminal (main.ts: process.stdout.isTTY), where a printed secret stays in view and in scrollback. */
  readonly outIsTerminal?: boolean
  /** True when `err` is a terminal (main.ts: process.stderr.isTTY): long commands draw their progress there. */
  readonly errIsTerminal?: boolean
}

/** What a command gets to work with. */
export interface CommandContext {
  readonly io: CliIo
  readonly env: Readonly<Record<string, string | undefined>>
  /** Validated configuration (loaded on first use, so `--help` works with a broken config). */
  config (): Config
  /** The registry connection (opened on first use, closed by the runner); checks the schema is migrated unless told not to. */
  registry (opts?: { migrated?: boolean }): Promise<RegistryConnection>
  /** Resolves when the process is asked to stop (SIGINT/SIGTERM); long-running commands await it. */
  readonly stopSignal: Promise<string>
  /** Registers work to run on SIGHUP (serve: reload the registry). */
  onReload (fn: () => void): void
  /**
   * Registers synchronous work to run when a second SIGINT/SIGTERM ends the process at once
   * (tenants exec: kill the children it started, which run in their own process groups).
   */
  onForcedExit (fn: () => void): void
}

export type Options = NonNullable<ParseArgsConfig['options']>

/** One CLI command (a leaf such as `tenants add`). */
export interface Command {
  readonly name: string
  readonly summary: string
  readonly usage: string
  readonly help?: string
  readonly options: Options
  /** Inclusive bounds on the number of positional arguments. */
  readonly positionals: readonly [number, number]
  run (ctx: CommandContext, args: ParsedArgs): Promise<number>
}

/** Parsed options and positionals of one invocation. */
export interface ParsedArgs {
  values: Record<string, string | boolean | string[] | boolean[] | undefined>
  positionals: string[]
}

/** Options every command accepts. */
export const GLOBAL_OPTIONS: Options = {
  config: { type: 'string' },
  help: { type: 'boolean', short: 'h' }
}

/** Parses argv strictly against the command's options; unknown options are usage errors. */
export function parseCommandArgs (command: Command, argv: readonly string[]): ParsedArgs {
  let parsed: ParsedArgs
  // `--help` as the very last word is the CLI's own even after `--` (which otherwise hands every
  // later word to the command `tenants exec` runs), so `tenants exec … -- <command> --help` checks
  // the line like any other instead of running the command with --help for every tenant.
  const dashDash = argv.indexOf('--')
  const trailingHelp = dashDash !== -1 && argv.length > dashDash + 1 && argv[argv.length - 1] === '--help'
  const words = trailingHelp ? argv.slice(0, -1) : argv
  try {
    parsed = parseArgs({ args: [...words], options: { ...GLOBAL_OPTIONS, ...command.options }, strict: true, allowPositionals: true }) as ParsedArgs
  } catch (err) {
    throw tpError('TENANT_PROXY_ERR_CLI_USAGE', [`${(err as Error).message.replace(/\. To specify a positional.*$/s, '')}; usage: ${command.usage}`], err)
  }
  if (trailingHelp) parsed.values.help = true
  // `<command> --help` alone asks for the help. After a complete command line, `--help` checks
  // that line as strictly as a real run would (options above, arguments below) before printing
  // the help, so a documented command line can be verified without running it.
  if (parsed.values.help === true && parsed.positionals.length === 0 && Object.keys(parsed.values).every((k) => k === 'help' || k === 'config')) return parsed
  const [min, max] = command.positionals
  const n = parsed.positionals.length
  if (n < min) throw tpError('TENANT_PROXY_ERR_CLI_USAGE', [`missing argument; usage: ${command.usage}`])
  if (n > max) throw tpError('TENANT_PROXY_ERR_CLI_USAGE', [`unexpected argument ${JSON.stringify(parsed.positionals[max])}; usage: ${command.usage}`])
  return parsed
}

/** A string option's value, or undefined. */
export function str (args: ParsedArgs, name: string): string | undefined {
  const v = args.values[name]
  return typeof v === 'string' ? v : undefined
}

/** A repeatable string option's values. */
export function strs (args: ParsedArgs, name: string): string[] {
  const v = args.values[name]
  return Array.isArray(v) ? v.filter((x): x is string => typeof x === 'string') : typeof v === 'string' ? [v] : []
}

/** A boolean flag. */
export function flag (args: ParsedArgs, name: string): boolean {
  return args.values[name] === true
}

/** Help text of one command. */
export function commandHelp (command: Command): string {
  const lines = [`Usage: ${command.usage}`, '', command.summary]
  if (command.help !== undefined) lines.push('', command.help)
  lines.push('', 'Global options:', '  --config <file>   JSON config file (or TENANT_PROXY_CONFIG)', '  -h, --help        show this help')
  return lines.join('\n') + '\n'
}

/** Renders rows as an aligned plain-text table. */
export function table (header: readonly string[], rows: ReadonlyArray<readonly string[]>): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)))
  const line = (cells: readonly string[]): string => cells.map((c, i) => c.padEnd(widths[i] ?? 0)).join('  ').trimEnd()
  return [line(header), ...rows.map(line)].join('\n') + '\n'
}
