/**
 * The in-memory registry index the proxy answers from: canonical host → route, slug → route.
 * A full load builds a new index that is swapped in with one assignment; a live change is applied
 * to the current index synchronously, in one turn of the event loop, so a request sees the
 * registry before or after a write, never half of it. Memory matters at a million tenants: one
 * flat object per tenant, interned state strings, and no map beyond the two lookups (plus, once
 * the ops descriptor API lists tenants, one array of the slugs in order).
 */
import type { DescriptorTarget } from '../descriptor/sign.js'
import { TENANT_STATES, type TenantState } from './names.js'
import { SlugOrder, type SlugEdit } from './slug-order.js'
import type { DomainRow, RegistryDelta, RegistrySnapshot, TenantRow } from './store.js'

/** Everything the data path needs about one tenant; immutable, replaced when the tenant changes. */
export class Route implements DescriptorTarget {
  constructor (
    readonly id: number,
    readonly slug: string,
    readonly state: TenantState,
    readonly upstream: string | null,
    readonly epoch: number,
    readonly dbName: string,
    readonly dbHost: string,
    readonly dbPort: number,
    /** The primary domain (the same string as its key in byHost), or null when the tenant has none. */
    readonly primaryHost: string | null,
    /** Non-null while the tenant is paused (`tenants pause`): how long a request may be held, ms. */
    readonly holdMs: number | null = null
  ) {
    Object.freeze(this)
  }

  /** The database as the descriptor states it (built on demand: only signing reads it). */
  get db (): { name: string, host: string, port: number } {
    return { name: this.dbName, host: this.dbHost, port: this.dbPort }
  }
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
  /** bySlug's keys in order, built on first use (the tenant list) and kept in order by applyDelta. */
  readonly slugOrder: SlugOrder
}

/** Where tenants with a null database host/port live. */
export interface DatabaseDefaults { readonly defaultHost: string, readonly defaultPort: number }

/**
 * Builds an index from a snapshot; null database host/port take the configured default server.
 * Routes equal to the previous index's are reused, so descriptors cached for them stay valid.
 */
export function buildIndex (snapshot: Pick<RegistrySnapshot, 'version' | 'registryId' | 'tenants' | 'domains'>, defaults: DatabaseDefaults, previous: RegistryIndex | null = null, now = Date.now()): RegistryIndex {
  const builder = new IndexBuilder({ version: snapshot.version, registryId: snapshot.registryId, loadedAt: now }, defaults, previous)
  builder.addTenants(snapshot.tenants)
  builder.addDomains(snapshot.domains)
  return builder.finish()
}

/** What an index is of: the registry version and id it reflects and when it was built. */
export interface IndexMeta { readonly version: number, readonly registryId: string, readonly loadedAt: number }

/**
 * Builds an index beside the one being served, a page of rows at a time (a paged full load yields
 * to the event loop between pages). All tenants first, then all domains: a domain names its
 * tenant by id. A domain whose tenant was not added is skipped (a paged load reads pages at
 * different instants; the change log applied afterwards brings it back, see sync.ts).
 */
export class IndexBuilder {
  readonly #meta: IndexMeta
  readonly #defaults: DatabaseDefaults
  readonly #previous: RegistryIndex | null
  /** Tenant id → route only while building: domains name their tenant by id. */
  #byId: Map<number, Route> | null = new Map()
  readonly #bySlug = new Map<string, Route>()
  readonly #byHost = new Map<string, Route>()

  constructor (meta: IndexMeta, defaults: DatabaseDefaults, previous: RegistryIndex | null = null) {
    this.#meta = meta
    this.#defaults = defaults
    this.#previous = previous
  }

  addTenants (rows: Iterable<TenantRow>): void {
    const byId = this.#building()
    for (const t of rows) {
      const route = routeFor(t, this.#defaults, this.#previous?.bySlug.get(t.slug))
      byId.set(t.id, route)
      this.#bySlug.set(t.slug, route)
    }
  }

  addDomains (rows: Iterable<DomainRow>): void {
    const byId = this.#building()
    for (const d of rows) {
      const route = byId.get(d.tenantId)
      // The primary domain's key is the route's own string: one copy of it per tenant, not two.
      if (route !== undefined) this.#byHost.set(d.hostname === route.primaryHost ? route.primaryHost : d.hostname, route)
    }
  }

  /** The index; the builder is done. */
  finish (): RegistryIndex {
    this.#building()
    this.#byId = null
    const bySlug = this.#bySlug
    return { version: this.#meta.version, registryId: this.#meta.registryId, loadedAt: this.#meta.loadedAt, byHost: this.#byHost, bySlug, slugOrder: new SlugOrder(() => bySlug.keys()) }
  }

  #building (): Map<number, Route> {
    if (this.#byId === null) throw new Error('IndexBuilder used after finish()')
    return this.#byId
  }
}

/**
 * The tenant's primary domain as the index routes it now, or null. A domain moved to another
 * tenant by a writer other than the CLI (an UPDATE of domains.tenant_id) logs only its new
 * tenant, so the old tenant's route may still name it: it counts only while it routes here.
 */
export function primaryHostOf (index: RegistryIndex, route: Route): string | null {
  const host = route.primaryHost
  return host !== null && index.byHost.get(host) === route ? host : null
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
 *
 * The change log names every slug a touched tenant had or has (a rename logs both), so the old
 * routes are found by slug; any route found there belongs to a touched tenant, because a slug
 * only moves between tenants that were both written.
 */
export function applyDelta (index: RegistryIndex, delta: Extract<RegistryDelta, { complete: true }>, defaults: DatabaseDefaults): DeltaResult {
  // Only slugs the delta names can appear or vanish; note which were there before.
  const named = index.slugOrder.tracking ? [...new Set([...delta.tenantSlugs, ...delta.tenants.map((t) => t.slug)])] : []
  const had = named.map((slug) => index.bySlug.has(slug))
  const old = new Map<number, Route>()
  for (const slug of delta.tenantSlugs) {
    const route = index.bySlug.get(slug)
    if (route !== undefined) {
      old.set(route.id, route)
      index.bySlug.delete(slug)
    }
  }
  // A tenant touched only through its domains still sits at its slug: reuse its route if unchanged.
  for (const row of delta.tenants) index.bySlug.set(row.slug, routeFor(row, defaults, old.get(row.id) ?? index.bySlug.get(row.slug)))
  let consistent = true
  const present = new Set<string>()
  for (const d of delta.domains) {
    const route = index.bySlug.get(d.slug)
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
  const edits: SlugEdit[] = []
  for (const [i, slug] of named.entries()) {
    const has = index.bySlug.has(slug)
    if (has !== had[i]) edits.push([slug, has])
  }
  index.slugOrder.apply(edits)
  return { removedHosts, consistent }
}

/** The route of a tenant row, reusing `old` when nothing the data path reads changed. */
function routeFor (t: TenantRow, defaults: DatabaseDefaults, old: Route | undefined): Route {
  const dbHost = t.databaseHost ?? defaults.defaultHost
  const dbPort = t.databasePort ?? defaults.defaultPort
  if (old !== undefined && old.id === t.id && old.slug === t.slug && old.state === t.state && old.upstream === t.upstream && old.epoch === t.epoch &&
    old.dbName === t.databaseName && old.dbHost === dbHost && old.dbPort === dbPort && old.primaryHost === t.primaryHost && old.holdMs === (t.holdMs ?? null)) return old
  // One copy of each state string, not one per tenant row read from PostgreSQL.
  const state = TENANT_STATES.find((s) => s === t.state) ?? t.state
  return new Route(t.id, t.slug, state, t.upstream, t.epoch, t.databaseName, dbHost, dbPort, t.primaryHost, t.holdMs ?? null)
}
