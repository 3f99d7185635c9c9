/**
 * `tenant-proxy registry status`: registry version, counts, connected proxies and the version
 * each of them has applied.
 */
import { flag, type Command } from './command.js'
import { listFeeds } from './wait.js'

export const registryStatus: Command = {
  name: 'registry status',
  summary: 'Show the registry version, tenant and domain counts, and the proxies connected to it with the version each has applied.',
  usage: 'tenant-proxy registry status [--json]',
  options: { json: { type: 'boolean' } },
  positionals: [0, 0],
  async run (ctx, args) {
    const registry = await ctx.registry()
    const applicationName = ctx.config().registry.applicationName
    const status = await registry.store.status()
    const proxies = await registry.pool.query<{ application_name: string, client_addr: string | null, backend_start: string }>(
      `SELECT application_name, client_addr::text, to_char(backend_start AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"') AS backend_start
       FROM pg_stat_activity WHERE datname = current_database() AND application_name = $1 AND pid <> pg_backend_pid()
       ORDER BY backend_start`, [applicationName])
    // Each running proxy holds one LISTEN connection whose name carries the version it applied.
    const feeds = (await listFeeds(registry.pool, applicationName)).map((f) => ({ ...f, lag: f.version === null ? null : Math.max(0, status.version - f.version) }))
    const result = { schema: registry.schema, embedded: registry.embedded, ...status, feeds, connections: proxies.rows }
    if (flag(args, 'json')) {
      ctx.io.out(JSON.stringify(result, null, 2) + '\n')
    } else {
      ctx.io.out([
        `schema:      ${result.schema}${result.embedded ? ' (embedded PostgreSQL)' : ''}`,
        `version:     ${result.version}`,
        `tenants:     ${result.tenants}`,
        `domains:     ${result.domains}`,
        `proxies:     ${result.feeds.length} listening for changes`,
        ...result.feeds.map((f) => `  ${f.proxy}  ${applied(f.version, f.lag)}  from ${f.client_addr ?? 'local socket'} since ${f.backend_start}`),
        `connections: ${result.connections.length} other tenant-proxy connections`
      ].join('\n') + '\n')
    }
    return 0
  }
}

function applied (version: number | null, lag: number | null): string {
  if (version === null || lag === null) return 'applied: none reported yet (loading)'
  return `applied: v${version} (${lag === 0 ? 'current' : `${lag} behind`})`
}
