/**
 * The in-memory registry index the proxy answers from: canonical host → route, slug → route.
 * A full load builds a new index that is swapped in with one assignment; a live change is applied
 * to the current index synchronously, in one turn of the event loop, so a request sees the
 * registry before or after a write, never half of it.
 */
import type { DescriptorTarget } from '../descriptor/sign.js'
import type { TenantState } from './names.js'
import type { RegistryDelta, RegistrySnapshot, TenantRow } from './store.js'

/** Everything the data path needs about one tenant; immutable, replaced when the tenant changes. */
export interface Route extends DescriptorTarget {
  readonly id: number
  readonly slug: string
  readonly state: TenantState
  readonly upstream: string | null
  readonly epoch: number
  readonly db: { readonly name: string, readonly host: string, readonly port: number }
}

/** A loaded registry. Only server-side sync code writes to it. */
export interface RegistryIndex {
  /** Registry change version the index reflects. */
  version: number
  /** The registry it came from (registry_state.registry_id). */
  readonly registryId: string
  /** When it was built, ms since the epoch. */
  readonly loadedAt: number
  readonly byHost: Map<string, Route>
  readonly bySlug: Map<string, Route>
  readonly byId: Map<number, Route>
}

/** Where tenants with a null database host/port live. */
export interface DatabaseDefaults { readonly defaultHost: string, readonly defaultPort: number }

/**
 * Builds an index from a snapshot; null database host/port take the configured default server.
 * Routes equal to the previous index's are reused, so descriptors cached for them stay valid.
 */
export function buildIndex (snapshot: Pick<RegistrySnapshot, 'version' | 'registryId' | 'tenants' | 'domains'>, defaults: DatabaseDefaults, previous: RegistryIndex | null = null, now = Date.now()): RegistryIndex {
  const byId = new Map<number, Route>()
  const bySlug = new Map<string, Route>()
  for (const t of snapshot.tenants) {
    const route = routeFor(t, defaults, previous?.bySlug.get(t.slug))
    byId.set(t.id, route)
    bySlug.set(t.slug, route)
  }
  const byHost = new Map<string, Route>()
  for (const d of snapshot.domains) {
    const route = byId.get(d.tenantId)
    if (route !== undefined) byHost.set(d.hostname, route)
  }
  return { version: snapshot.version, registryId: snapshot.registryId, loadedAt: now, byHost, bySlug, byId }
}

/** What applying a delta did. */
export interface DeltaResult {
  /** Hostnames no longer in the index (their cached descriptors can go). */
  readonly removedHosts: string[]
  /** False when the delta names a tenant the index does not know: the caller must resync fully. */
  readonly consistent: boolean
}

/**
 * Applies a complete delta (rows current as of delta.version) to an index at delta.since. Runs
 * synchronously: no request observes the index between the first and the last assignment.
 */
export function applyDelta (index: RegistryIndex, delta: Extract<RegistryDelta, { complete: true }>, defaults: DatabaseDefaults): DeltaResult {
  const rows = new Map<number, TenantRow>()
  for (const row of delta.tenants) rows.set(row.id, row)
  for (const id of delta.tenantIds) {
    const old = index.byId.get(id)
    const row = rows.get(id)
    // Only remove a slug entry that is still this tenant's: two tenants may swap slugs in one write.
    if (old !== undefined && index.bySlug.get(old.slug) === old && (row === undefined || row.slug !== old.slug)) index.bySlug.delete(old.slug)
    if (row === undefined) {
      index.byId.delete(id)
      continue
    }
    const route = routeFor(row, defaults, old)
    index.byId.set(id, route)
    index.bySlug.set(row.slug, route)
  }
  let consistent = true
  const present = new Set<string>()
  for (const d of delta.domains) {
    const route = index.byId.get(d.tenantId)
    if (route === undefined) {
      consistent = false
      continue
    }
    index.byHost.set(d.hostname, route)
    present.add(d.hostname)
  }
  const removedHosts: string[] = []
  for (const hostname of delta.hostnames) {
    if (!present.has(hostname) && index.byHost.delete(hostname)) removedHosts.push(hostname)
  }
  index.version = delta.version
  return { removedHosts, consistent }
}

/** The route of a tenant row, reusing `old` when nothing the data path reads changed. */
function routeFor (t: TenantRow, defaults: DatabaseDefaults, old: Route | undefined): Route {
  const dbHost = t.databaseHost ?? defaults.defaultHost
  const dbPort = t.databasePort ?? defaults.defaultPort
  if (old !== undefined && old.id === t.id && old.slug === t.slug && old.state === t.state && old.upstream === t.upstream && old.epoch === t.epoch &&
    old.db.name === t.databaseName && old.db.host === dbHost && old.db.port === dbPort) return old
  return Object.freeze({ id: t.id, slug: t.slug, state: t.state, upstream: t.upstream, epoch: t.epoch, db: Object.freeze({ name: t.databaseName, host: dbHost, port: dbPort }) })
}
