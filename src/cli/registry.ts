/**
 * `tenant-proxy registry status`: registry version, counts and connected proxies.
 */
import { flag, type Command } from './command.js'

export const registryStatus: Command = {
  name: 'registry status',
  summary: 'Show the registry version, tenant and domain counts, and the proxies connected to it.',
  usage: 'tenant-proxy registry status [--json]',
  options: { json: { type: 'boolean' } },
  positionals: [0, 0],
  async run (ctx, args) {
    const registry = await ctx.registry()
    const status = await registry.store.status()
    const proxies = await registry.pool.query<{ application_name: string, client_addr: string | null, backend_start: string }>(
      `SELECT application_name, client_addr::text, to_char(backend_start AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"') AS backend_start
       FROM pg_stat_activity WHERE datname = current_database() AND application_name = $1 AND pid <> pg_backend_pid()
       ORDER BY backend_start`, [ctx.config().registry.applicationName])
    // Each running proxy holds one LISTEN connection named "<applicationName> feed <host>/<pid>".
    const feeds = await registry.pool.query<{ application_name: string, client_addr: string | null, backend_start: string, state: string | null }>(
      `SELECT application_name, client_addr::text, to_char(backend_start AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"') AS backend_start, state
       FROM pg_stat_activity WHERE datname = current_database() AND starts_with(application_name, $1)
       ORDER BY backend_start`, [`${ctx.config().registry.applicationName} feed `])
    const result = { schema: registry.schema, embedded: registry.embedded, ...status, feeds: feeds.rows, connections: proxies.rows }
    if (flag(args, 'json')) {
      ctx.io.out(JSON.stringify(result, null, 2) + '\n')
    } else {
      ctx.io.out([
        `schema:      ${result.schema}${result.embedded ? ' (embedded PostgreSQL)' : ''}`,
        `version:     ${result.version}`,
        `tenants:     ${result.tenants}`,
        `domains:     ${result.domains}`,
        `proxies:     ${result.feeds.length} listening for changes`,
        ...result.feeds.map((f) => `  ${f.application_name.slice(ctx.config().registry.applicationName.length + 6)}  from ${f.client_addr ?? 'local socket'} since ${f.backend_start}`),
        `connections: ${result.connections.length} other tenant-proxy connections`
      ].join('\n') + '\n')
    }
    return 0
  }
}
