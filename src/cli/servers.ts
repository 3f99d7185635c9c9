/**
 * `tenant-proxy servers …`: the database servers tenant databases live on, as registry objects.
 * A tenant naming a server gets the server's host and port in its descriptor; changing them here
 * re-points every tenant on the server at once (one registry version, every epoch bumped).
 * Admin credentials stay out of the registry: a server names the environment variable or file
 * that holds its admin URL, read by the CLI that needs it (tenants create/drop, doctor).
 */
import { resolve } from 'node:path'
import { tpError } from '../errors.js'
import { checkAdminUrlFile, checkDatabaseHost, checkEnvName, checkPort, checkRoleName, checkServerName } from '../registry/names.js'
import type { ServerPatch, ServerRecord, Written } from '../registry/store.js'
import { credentialsLabel } from '../servers/credentials.js'
import { flag, str, table, type Command, type CommandContext, type ParsedArgs } from './command.js'
import { settleWait, WAIT_HELP, WAIT_OPTIONS, WAIT_USAGE, waitAfterWrite, waitTimeoutMs } from './wait.js'

const CREDENTIALS_HELP = `Admin credentials: --admin-url-env VAR names an environment variable, --admin-url-file PATH a
file (its first line that is not a # comment), holding a postgres:// URL of a role that may
create and drop databases. Only the name or path is stored in the registry; the CLI that needs
the credentials (tenants create, tenants drop, doctor) reads them from its own environment or
file system. A relative PATH is stored as an absolute one.`

export const serversAdd: Command = {
  name: 'servers add',
  summary: 'Register a database server tenant databases can live on.',
  usage: `tenant-proxy servers add <name> --host <host> [--port <port>] [--admin-url-env VAR | --admin-url-file PATH] [--owner <role>] [--json] ${WAIT_USAGE}`,
  help: `--host and --port are what the descriptor tells apps (default port 5432). --owner is the default
owner role of databases tenants create makes on this server (tenants create --owner overrides it).

${CREDENTIALS_HELP}

${WAIT_HELP}`,
  options: {
    host: { type: 'string' },
    port: { type: 'string' },
    'admin-url-env': { type: 'string' },
    'admin-url-file': { type: 'string' },
    owner: { type: 'string' },
    json: { type: 'boolean' },
    ...WAIT_OPTIONS
  },
  positionals: [1, 1],
  async run (ctx, args) {
    const name = checkServerName(args.positionals[0] ?? '')
    const host = str(args, 'host')
    if (host === undefined) throw usage(`--host is required; usage: ${this.usage}`)
    const port = str(args, 'port')
    const { env, file } = credentialOptions(args)
    const owner = str(args, 'owner')
    const wait = waitTimeoutMs(args)
    const written = await (await ctx.registry()).store.addServer({
      name,
      host: checkDatabaseHost(host),
      port: port === undefined ? 5432 : checkPort(port),
      adminUrlEnv: env ?? null,
      adminUrlFile: file ?? null,
      owner: owner === undefined ? null : checkRoleName(owner)
    })
    const s = written.result
    await report(ctx, args, wait, written, s, `added database server ${s.name} at ${s.host}:${s.port} (admin credentials: ${credentialsLabel(s)})`)
    return 0
  }
}

export const serversList: Command = {
  name: 'servers list',
  summary: 'List the database servers with their address, credentials reference and tenant count.',
  usage: 'tenant-proxy servers list [--json]',
  options: { json: { type: 'boolean' } },
  positionals: [0, 0],
  async run (ctx, args) {
    const servers = await (await ctx.registry()).store.listServers()
    if (flag(args, 'json')) {
      ctx.io.out(JSON.stringify(servers, null, 2) + '\n')
      return 0
    }
    const defaultServer = ctx.config().tenantDatabase.defaultServer
    ctx.io.out(table(['NAME', 'ADDRESS', 'ADMIN CREDENTIALS', 'OWNER', 'TENANTS'], servers.map((s) => [
      `${s.name}${s.name === defaultServer ? ' (default)' : ''}`, `${s.host}:${s.port}`, credentialsLabel(s), s.owner ?? '-', String(s.tenants)
    ])))
    ctx.io.out(`${servers.length} server(s)\n`)
    if (defaultServer !== null && !servers.some((s) => s.name === defaultServer)) {
      ctx.io.err(`tenant-proxy: warning: tenantDatabase.defaultServer is ${defaultServer}, which is not registered\n`)
    }
    return 0
  }
}

export const serversUpdate: Command = {
  name: 'servers update',
  summary: "Change a database server's address, credentials reference or default owner; a new address re-points every tenant on it.",
  usage: `tenant-proxy servers update <name> [--host <host>] [--port <port>] [--admin-url-env VAR | --admin-url-file PATH | --no-admin-url] [--owner <role> | --no-owner] [--json] ${WAIT_USAGE}`,
  help: `A new --host or --port changes the descriptor of every tenant on the server in one registry
transaction and bumps each one's epoch (apps reconnect). It moves no data: the databases must
already answer at the new address (a replica promoted, a DNS name changed, a pooler put in front).

${CREDENTIALS_HELP}

${WAIT_HELP}`,
  options: {
    host: { type: 'string' },
    port: { type: 'string' },
    'admin-url-env': { type: 'string' },
    'admin-url-file': { type: 'string' },
    'no-admin-url': { type: 'boolean' },
    owner: { type: 'string' },
    'no-owner': { type: 'boolean' },
    json: { type: 'boolean' },
    ...WAIT_OPTIONS
  },
  positionals: [1, 1],
  async run (ctx, args) {
    const name = checkServerName(args.positionals[0] ?? '')
    const patch: ServerPatch = {}
    const host = str(args, 'host')
    const port = str(args, 'port')
    if (host !== undefined) patch.host = checkDatabaseHost(host)
    if (port !== undefined) patch.port = checkPort(port)
    const { env, file } = credentialOptions(args)
    if (flag(args, 'no-admin-url') && (env !== undefined || file !== undefined)) throw usage('--no-admin-url cannot be combined with --admin-url-env or --admin-url-file')
    // A new reference replaces the old one whichever kind it is.
    if (env !== undefined) Object.assign(patch, { adminUrlEnv: env, adminUrlFile: null })
    if (file !== undefined) Object.assign(patch, { adminUrlEnv: null, adminUrlFile: file })
    if (flag(args, 'no-admin-url')) Object.assign(patch, { adminUrlEnv: null, adminUrlFile: null })
    const owner = str(args, 'owner')
    if (owner !== undefined && flag(args, 'no-owner')) throw usage('--owner cannot be combined with --no-owner')
    if (owner !== undefined) patch.owner = checkRoleName(owner)
    if (flag(args, 'no-owner')) patch.owner = null
    const wait = waitTimeoutMs(args)
    const written = await (await ctx.registry()).store.updateServer(name, patch)
    const { server: s, tenantsMoved } = written.result
    const moved = tenantsMoved > 0 ? `; ${tenantsMoved} tenant(s) now point at ${s.host}:${s.port} (epochs bumped)` : ''
    await report(ctx, args, wait, { result: s, version: written.version }, { ...s, tenants_moved: tenantsMoved }, `updated database server ${s.name}${moved}`)
    return 0
  }
}

export const serversRemove: Command = {
  name: 'servers remove',
  summary: 'Remove a database server from the registry (refused while any tenant names it).',
  usage: `tenant-proxy servers remove <name> --yes [--dry-run] [--json] ${WAIT_USAGE}`,
  help: `Only the registry entry goes; no database is touched. Refused, naming them, while tenants
use the server. --dry-run checks and changes nothing (no --yes needed).

${WAIT_HELP}`,
  options: { yes: { type: 'boolean' }, 'dry-run': { type: 'boolean' }, json: { type: 'boolean' }, ...WAIT_OPTIONS },
  positionals: [1, 1],
  async run (ctx, args) {
    const name = checkServerName(args.positionals[0] ?? '')
    const dryRun = flag(args, 'dry-run')
    if (!dryRun && !flag(args, 'yes')) throw tpError('TENANT_PROXY_ERR_CLI_CONFIRM', [`refusing to remove database server ${name} without --yes`])
    const wait = waitTimeoutMs(args)
    const written = await (await ctx.registry()).store.removeServer(name, { dryRun })
    const s = written.result
    if (dryRun) {
      if (flag(args, 'json')) ctx.io.out(JSON.stringify({ dry_run: true, ...s }, null, 2) + '\n')
      else ctx.io.out(`dry run, nothing changed: database server ${s.name} (${s.host}:${s.port}) has no tenants and would be removed\n`)
      return 0
    }
    await report(ctx, args, wait, written, s, `removed database server ${s.name} (${s.host}:${s.port}); its databases were not touched`)
    return 0
  }
}

function credentialOptions (args: ParsedArgs): { env: string | undefined, file: string | undefined } {
  const env = str(args, 'admin-url-env')
  const file = str(args, 'admin-url-file')
  if (env !== undefined && file !== undefined) throw usage('give --admin-url-env or --admin-url-file, not both')
  return { env: env === undefined ? undefined : checkEnvName(env), file: file === undefined ? undefined : resolve(checkAdminUrlFile(file)) }
}

/** Prints the summary (text) or the record (--json, after the wait), then settles --wait. */
async function report (ctx: CommandContext, args: ParsedArgs, waitMs: number | null, written: Written<unknown>, record: ServerRecord | Record<string, unknown>, summary: string): Promise<void> {
  const json = flag(args, 'json')
  if (!json) ctx.io.out(summary + '\n')
  const wait = await waitAfterWrite(ctx, waitMs, written.version)
  if (json) ctx.io.out(JSON.stringify(wait === null ? record : { ...record, wait }, null, 2) + '\n')
  settleWait(ctx, wait)
}

function usage (message: string): Error {
  return tpError('TENANT_PROXY_ERR_CLI_USAGE', [message])
}
