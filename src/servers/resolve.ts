/**
 * Which registry database server holds a tenant's database: the server the tenant names, or else
 * the one server registered at the tenant's host and port (tenants added with --db-host, adopted,
 * or on tenantDatabase.defaultHost/Port), whose admin credentials then reach its database.
 */
import type { ServerRecord, TenantRecord } from '../registry/store.js'

/** The outcome: the server, or why there is none. */
export type TenantServer =
  | { readonly ok: true, readonly server: ServerRecord, readonly by: 'name' | 'address' }
  | { readonly ok: false, readonly reason: string }

/** Finds the server of `tenant` among `servers` (defaults: where a null host/port points). */
export function serverOfTenant (tenant: Pick<TenantRecord, 'database_server' | 'database_host' | 'database_port'>, servers: readonly ServerRecord[], defaults: { defaultHost: string, defaultPort: number }): TenantServer {
  if (tenant.database_server !== null) {
    const server = servers.find((s) => s.name === tenant.database_server)
    return server === undefined ? { ok: false, reason: `server ${tenant.database_server} is not registered` } : { ok: true, server, by: 'name' }
  }
  const host = tenant.database_host ?? defaults.defaultHost
  const port = tenant.database_port ?? defaults.defaultPort
  const matches = servers.filter((s) => s.host === host && s.port === port)
  if (matches.length === 1 && matches[0] !== undefined) return { ok: true, server: matches[0], by: 'address' }
  if (matches.length > 1) return { ok: false, reason: `${matches.length} servers are registered at ${host}:${port} (${matches.map((s) => s.name).join(', ')}); name one with tenant-proxy tenants update --server` }
  return { ok: false, reason: `no server is registered at ${host}:${port} (register it with tenant-proxy servers add, with admin credentials)` }
}
