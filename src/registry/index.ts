/**
 * The in-memory registry index the proxy answers from: canonical host → route, slug → route.
 * Built whole from a snapshot and swapped in one assignment, so a request sees either the old
 * registry or the new one, never a mix.
 */
import type { DescriptorTarget } from '../descriptor/sign.js'
import type { TenantState } from './names.js'
import type { RegistrySnapshot } from './store.js'

/** Everything the data path needs about one tenant; immutable, replaced when the tenant changes. */
export interface Route extends DescriptorTarget {
  readonly slug: string
  readonly state: TenantState
  readonly upstream: string | null
  readonly epoch: number
  readonly db: { readonly name: string, readonly host: string, readonly port: number }
}

/** A loaded registry. */
export interface RegistryIndex {
  readonly version: number
  /** When it was loaded, ms since the epoch. */
  readonly loadedAt: number
  readonly byHost: ReadonlyMap<string, Route>
  readonly bySlug: ReadonlyMap<string, Route>
}

/**
 * Builds an index from a snapshot; null database host/port take the configured default server.
 * Routes equal to the previous index's are reused, so descriptors cached for them stay valid.
 */
export function buildIndex (snapshot: RegistrySnapshot, defaults: { defaultHost: string, defaultPort: number }, previous: RegistryIndex | null = null, now = Date.now()): RegistryIndex {
  const byId = new Map<number, Route>()
  const bySlug = new Map<string, Route>()
  for (const t of snapshot.tenants) {
    const dbHost = t.databaseHost ?? defaults.defaultHost
    const dbPort = t.databasePort ?? defaults.defaultPort
    const old = previous?.bySlug.get(t.slug)
    const route: Route = old !== undefined && old.state === t.state && old.upstream === t.upstream && old.epoch === t.epoch &&
      old.db.name === t.databaseName && old.db.host === dbHost && old.db.port === dbPort
      ? old
      : Object.freeze({ slug: t.slug, state: t.state, upstream: t.upstream, epoch: t.epoch, db: Object.freeze({ name: t.databaseName, host: dbHost, port: dbPort }) })
    byId.set(t.id, route)
    bySlug.set(t.slug, route)
  }
  const byHost = new Map<string, Route>()
  for (const d of snapshot.domains) {
    const route = byId.get(d.tenantId)
    if (route !== undefined) byHost.set(d.hostname, route)
  }
  return { version: snapshot.version, loadedAt: now, byHost, bySlug }
}
