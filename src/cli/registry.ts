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
    const result = { schema: registry.schema, embedded: registry.embedded, ...status, connections: proxies.rows }
    if (flag(args, 'json')) {
      ctx.io.out(JSON.stringify(result, null, 2) + '\n')
    } else {
      ctx.io.out([
        `schema:      ${result.schema}${result.embedded ? ' (embedded PostgreSQL)' : ''}`,
        `version:     ${result.version}`,
        `tenants:     ${result.tenants}`,
        `domains:     ${result.domains}`,
        `connections: ${result.connections.length} from tenant-proxy processes`
      ].join('\n') + '\n')
    }
    return 0
  }
}
