/**
 * Dispatches `tenant-proxy <command…>` to its command, prints help, and turns errors into one
 * clear line and an exit code. Never touches `process`: main.ts passes env, streams and signals.
 */
import { loadConfig, type Config } from '../config/load.js'
import { EXIT, isTpError } from '../errors.js'
import { redactUrls } from '../redact.js'
import { openRegistry, type RegistryConnection } from '../registry/connect.js'
import { assertMigrated } from '../registry/migrate.js'
import { commandHelp, parseCommandArgs, str, type CliIo, type CommandContext } from './command.js'
import { COMMANDS, type CommandEntry } from './commands.js'

export { COMMANDS }

/** What the process gives the CLI. */
export interface CliEnvironment {
  env: Readonly<Record<string, string | undefined>>
  io: CliIo
  stopSignal?: Promise<string>
  onReload?: (fn: () => void) => void
  onForcedExit?: (fn: () => void) => void
}

/** Runs one CLI invocation and returns its exit code. */
export async function runCli (argv: readonly string[], environment: CliEnvironment): Promise<number> {
  const { io } = environment
  const words = argv.filter((a) => !a.startsWith('-'))
  const entry = findCommand(argv)
  if (entry === undefined) {
    const group = COMMANDS.filter((c) => c.name.split(' ')[0] === words[0])
    // Help for everything, or for one group (`tenants --help`); a word that names no command is
    // an error with or without --help, so a mistyped command line never passes for a valid one.
    const helpTopic = words.length === 0 || (words.length === 1 && group.length > 0)
    if (argv.length === 0 || (helpTopic && (argv.includes('--help') || argv.includes('-h')))) {
      io.out(await overview(words[0]))
      return argv.length === 0 ? EXIT.usage : EXIT.ok
    }
    io.err(group.length > 0
      ? `tenant-proxy: unknown ${words[0] ?? ''} command ${JSON.stringify(words[1] ?? '')}; try: ${group.map((c) => c.name).join(', ')}\n`
      : `tenant-proxy: unknown command ${JSON.stringify(words[0] ?? argv[0] ?? '')}; run tenant-proxy --help\n`)
    return EXIT.usage
  }

  let registry: RegistryConnection | undefined
  let config: Config | undefined
  try {
    const command = await entry.load()
    const args = parseCommandArgs(command, argv.slice(command.name.split(' ').length))
    if (args.values.help === true) {
      io.out(commandHelp(command))
      return EXIT.ok
    }
    const ctx: CommandContext = {
      io,
      env: environment.env,
      config () {
        config ??= loadConfig({ env: environment.env, configPath: str(args, 'config') })
        return config
      },
      async registry (opts = {}) {
        if (registry === undefined) {
          registry = await openRegistry(ctx.config(), cliLogger(io))
          if (opts.migrated !== false) await assertMigrated(registry.pool, registry.schema)
        }
        return registry
      },
      stopSignal: environment.stopSignal ?? new Promise<string>(() => undefined),
      onReload: environment.onReload ?? (() => undefined),
      onForcedExit: environment.onForcedExit ?? (() => undefined)
    }
    return await command.run(ctx, args)
  } catch (err) {
    return reportError(io, err)
  } finally {
    await registry?.close().catch((err: unknown) => io.err(`tenant-proxy: closing the registry failed: ${redactUrls((err as Error).message)}\n`))
  }
}

function findCommand (argv: readonly string[]): CommandEntry | undefined {
  return COMMANDS.find((c) => {
    const parts = c.name.split(' ')
    return parts.every((p, i) => argv[i] === p)
  })
}

function reportError (io: CliIo, err: unknown): number {
  if (isTpError(err)) {
    // Catalogue messages are built without credentials; redacting again costs nothing.
    io.err(`tenant-proxy: ${redactUrls(err.message)} (${err.code})\n`)
    return err.exit
  }
  io.err(`tenant-proxy: unexpected error: ${redactUrls(err instanceof Error ? err.stack ?? err.message : String(err))}\n`)
  return EXIT.failed
}

async function overview (group: string | undefined): Promise<string> {
  const shown = COMMANDS.filter((c) => group === undefined || c.name.split(' ')[0] === group)
  // Only the overview needs every command's summary: load them here, never on a command's path.
  const list = await Promise.all((shown.length > 0 ? shown : COMMANDS).map(async (c) => await c.load()))
  const width = Math.max(...list.map((c) => c.name.length))
  return [
    'tenant-proxy: routes each request to its tenant and hands the app a signed tenant database descriptor.',
    '',
    'Usage: tenant-proxy <command> [options]   (tenant-proxy <command> --help for details)',
    '',
    'Commands:',
    ...list.map((c) => `  ${c.name.padEnd(width)}  ${c.summary}`),
    '',
    'Configuration: config/defaults.ts lists every key; override with --config <file.json> or TENANT_PROXY_* variables.',
    ''
  ].join('\n')
}

function cliLogger (io: CliIo): { debug (msg: string): void, info (msg: string): void, warn (msg: string): void } {
  return {
    debug () {},
    info () {},
    warn (msg) { io.err(`tenant-proxy: warning: ${msg}\n`) }
  }
}
