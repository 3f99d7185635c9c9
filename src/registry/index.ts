/**
 * The in-memory registry index the proxy answers from: canonical host → route, slug → route.
 * A full load builds a new index that is swapped in with one assignment; a live change is applied
 * to the current index synchronously, in one turn of the event loop, so a request sees the
 * registry before or after a write, never half of it.
 *
 * Memory matters at a million tenants (issue 12: at most 300 bytes per tenant), so the index is
 * columns, not objects: one row per tenant in parallel typed arrays (id, epoch, port, state,
 * interned database host and upstream, references to its strings), one row per domain (hostname,
 * tenant row), the strings packed in a StringArena and two KeyTables from hostname and slug to
 * rows. A Route object is made only when a lookup asks for one, and a small direct-mapped cache
 * keeps the routes of the hosts that get traffic, so a hit allocates nothing.
 *
 * A tenant row carries a generation, taken from a process-wide counter whenever the row is
 * created with new facts; a route made later from an unchanged row has the same generation, and
 * the descriptor cache keys its tokens on it (what route object identity used to be).
 *
 * Rows of deleted tenants are not reused within an index (a domain row that a writer other than
 * the CLI left pointing at one routes nowhere instead of to a stranger); a full load starts fresh.
 */
import type { DescriptorTarget } from '../descriptor/sign.js'
import { KeyTable } from './key-table.js'
import { TENANT_STATES, type TenantState } from './names.js'
import { SlugOrder, type SlugEdit } from './slug-order.js'
import { NO_STRING, StringArena, decodeRef, equalsRef, hashString, type ArenaView } from './string-arena.js'
import type { DomainRow, RegistryDelta, RegistrySnapshot, TenantRow } from './store.js'

/** State code of a deleted tenant's row. */
const GONE = 255
/** Routes kept made (direct-mapped by tenant row); about 100 bytes each when full. */
const ROUTE_CACHE = 16_384
/** Arena bytes no longer used above which a delta rebuilds the arena (and above half of it). */
const COMPACT_DEAD_BYTES = 1 << 20

let generations = 0

/** Everything the data path needs about one tenant; immutable, made anew when the tenant changes. */
export class Route implements DescriptorTarget {
  readonly #arena: ArenaView
  readonly #slugRef: number
  readonly #dbNameRef: number
  readonly #primaryRef: number
  #slug: string | null = null
  #dbName: string | null = null
  #primary: string | null | undefined

  constructor (
    readonly id: number,
    readonly state: TenantState,
    readonly upstream: string | null,
    readonly epoch: number,
    readonly dbHost: string,
    readonly dbPort: number,
    /** Non-null while the tenant is paused (`tenants pause`): how long a request may be held, ms. */
    readonly holdMs: number | null,
    /** Equal for two routes of the same tenant with the same facts (see the module comment). */
    readonly generation: number,
    arena: ArenaView, slugRef: number, dbNameRef: number, primaryRef: number
  ) {
    this.#arena = arena
    this.#slugRef = slugRef
    this.#dbNameRef = dbNameRef
    this.#primaryRef = primaryRef
    // Not frozen (readonly in the type is the contract): a route is made on every lookup that
    // misses the route cache, and freezing costs as much as the rest of its construction.
  }

  // The strings are decoded on first use: the data path reads the state and upstream of most
  // requests and the strings of few (signing, refusals, holds).
  get slug (): string {
    return (this.#slug ??= decodeRef(this.#arena, this.#slugRef) as string)
  }

  get dbName (): string {
    return (this.#dbName ??= decodeRef(this.#arena, this.#dbNameRef) as string)
  }

  /** The primary domain, or null when the tenant has none. */
  get primaryHost (): string | null {
    if (this.#primary === undefined) this.#primary = decodeRef(this.#arena, this.#primaryRef)
    return this.#primary
  }

  /** The database as the descriptor states it (built on demand: only signing reads it). */
  get db (): { name: string, host: string, port: number } {
    return { name: this.dbName, host: this.dbHost, port: this.dbPort }
  }
}

/** A read-only map view of the index (hostname → route, or slug → route). */
export interface RouteMap extends Iterable<[string, Route]> {
  readonly size: number
  get: (key: string) => Route | undefined
  has: (key: string) => boolean
  keys: () => IterableIterator<string>
  values: () => IterableIterator<Route>
  entries: () => IterableIterator<[string, Route]>
}

/** A loaded registry. Only server-side sync code writes to it (applyDelta). */
export interface RegistryIndex {
  /** Registry change version the index reflects. */
  version: number
  /** The registry it came from (registry_state.registry_id). */
  readonly registryId: string
  /** When it was built, ms since the epoch. */
  readonly loadedAt: number
  readonly byHost: RouteMap
  readonly bySlug: RouteMap
  /** bySlug's keys in order, built on first use (the tenant list) and kept in order by applyDelta. */
  readonly slugOrder: SlugOrder
}

/** Where tenants with a null database host/port live. */
export interface DatabaseDefaults { readonly defaultHost: string, readonly defaultPort: number }

/** The columns; see the module comment. */
class Columns {
  arena: StringArena
  // Tenant rows.
  tenants = 0
  live = 0
  id: Float64Array
  epoch: Float64Array
  generation: Float64Array
  port: Uint16Array
  state: Uint8Array
  dbHost: Uint32Array
  /** Interned upstream + 1; 0 for none. */
  upstream: Uint32Array
  slug: Int32Array
  dbName: Int32Array
  primary: Int32Array
  /** Paused tenants only (few): row → hold ms. */
  readonly hold = new Map<number, number>()
  // Domain rows.
  domains = 0
  host: Int32Array
  tenant: Int32Array
  readonly freeDomains: number[] = []
  readonly hostTable: KeyTable
  readonly slugTable: KeyTable
  /** Database hosts and upstream names: a few distinct strings, each stored once. */
  readonly strings: string[] = []
  readonly #stringIds = new Map<string, number>()
  #routes: Array<Route | undefined> = new Array<Route | undefined>(ROUTE_CACHE).fill(undefined)

  constructor (tenants: number, domains: number, arena: StringArena, arrays: ColumnArrays = allocateColumns(tenants, domains), tables: { host: KeyTable, slug: KeyTable } = { host: new KeyTable(domains), slug: new KeyTable(tenants) }) {
    this.arena = arena
    this.id = arrays.id
    this.epoch = arrays.epoch
    this.generation = arrays.generation
    this.port = arrays.port
    this.state = arrays.state
    this.dbHost = arrays.dbHost
    this.upstream = arrays.upstream
    this.slug = arrays.slug
    this.dbName = arrays.dbName
    this.primary = arrays.primary
    this.host = arrays.host
    this.tenant = arrays.tenant
    this.hostTable = tables.host
    this.slugTable = tables.slug
  }

  intern (s: string): number {
    let n = this.#stringIds.get(s)
    if (n === undefined) {
      n = this.strings.length
      this.strings.push(s)
      this.#stringIds.set(s, n)
    }
    return n
  }

  internedId (s: string): number | undefined {
    return this.#stringIds.get(s)
  }

  findTenant (slug: string): number {
    return this.slugTable.find(this.arena, this.slug, slug, hashString(slug))
  }

  findDomain (host: string): number {
    return this.hostTable.find(this.arena, this.host, host, hashString(host))
  }

  /** The route of tenant row `t`, from the cache when it is current. */
  route (t: number): Route {
    const k = t & (ROUTE_CACHE - 1)
    const cached = this.#routes[k]
    if (cached !== undefined && cached.generation === this.generation[t] && cached.id === this.id[t]) return cached
    const r = this.makeRoute(t)
    this.#routes[k] = r
    return r
  }

  /** A route of row `t` that is not cached (for walks over every tenant). */
  makeRoute (t: number): Route {
    const up = this.upstream[t] as number
    return new Route(this.id[t] as number, TENANT_STATES[this.state[t] as number] as TenantState, up === 0 ? null : this.strings[up - 1] as string,
      this.epoch[t] as number, this.strings[this.dbHost[t] as number] as string, this.port[t] as number, this.hold.get(t) ?? null,
      this.generation[t] as number, this.arena, this.slug[t] as number, this.dbName[t] as number, this.primary[t] as number)
  }

  /** True when row `t` states what `row` does (resolved against the defaults). */
  same (t: number, row: TenantRow, dbHost: string, dbPort: number): boolean {
    const a = this.arena
    // An upstream never interned here is new: -1 matches no row.
    const up = row.upstream === null ? 0 : (this.internedId(row.upstream) ?? -2) + 1
    return this.id[t] === row.id && this.state[t] === stateCode(row.state) && this.epoch[t] === row.epoch && this.port[t] === dbPort &&
      this.upstream[t] === up && this.strings[this.dbHost[t] as number] === dbHost && (this.hold.get(t) ?? null) === (row.holdMs ?? null) &&
      equalsRef(a, this.slug[t] as number, row.slug) && equalsRef(a, this.dbName[t] as number, row.databaseName) &&
      (row.primaryHost === null ? this.primary[t] === NO_STRING : equalsRef(a, this.primary[t] as number, row.primaryHost))
  }

  /** Writes `row` into tenant row `t` (a new row when t is this.tenants), with `generation`. */
  setTenant (t: number, row: TenantRow, dbHost: string, dbPort: number, generation: number): void {
    if (t === this.tenants) {
      if (t === this.id.length) this.#growTenants()
      this.tenants++
      this.live++
    } else {
      this.arena.release(this.slug[t] as number)
      this.arena.release(this.dbName[t] as number)
      this.arena.release(this.primary[t] as number)
    }
    this.id[t] = row.id
    this.epoch[t] = row.epoch
    this.generation[t] = generation
    this.port[t] = dbPort
    this.state[t] = stateCode(row.state)
    this.dbHost[t] = this.intern(dbHost)
    this.upstream[t] = row.upstream === null ? 0 : this.intern(row.upstream) + 1
    this.slug[t] = this.arena.add(row.slug)
    this.dbName[t] = this.arena.add(row.databaseName)
    this.primary[t] = row.primaryHost === null ? NO_STRING : this.arena.add(row.primaryHost)
    if (row.holdMs !== undefined && row.holdMs !== null) this.hold.set(t, row.holdMs)
    else this.hold.delete(t)
  }

  /** Points `hostname` at tenant row `t` (adding the domain row when new). */
  setDomain (hostname: string, t: number): void {
    const hash = hashString(hostname)
    const d = this.hostTable.find(this.arena, this.host, hostname, hash)
    if (d !== -1) {
      this.tenant[d] = t
      return
    }
    let row = this.freeDomains.pop()
    if (row === undefined) {
      if (this.domains === this.host.length) this.#growDomains()
      row = this.domains++
    }
    // The primary domain's key is the tenant's own string: one copy of it, not two.
    const primary = this.primary[t] as number
    this.host[row] = primary !== NO_STRING && equalsRef(this.arena, primary, hostname) ? primary : this.arena.add(hostname)
    this.tenant[row] = t
    this.hostTable.insert(this.arena, this.host, row, hash)
  }

  removeDomain (hostname: string): boolean {
    const d = this.hostTable.remove(this.arena, this.host, hostname, hashString(hostname))
    if (d === -1) return false
    const t = this.tenant[d] as number
    if (this.host[d] !== this.primary[t]) this.arena.release(this.host[d] as number)
    this.host[d] = NO_STRING
    this.tenant[d] = -1
    this.freeDomains.push(d)
    return true
  }

  /** Drops tenant row `t` (its slug is already out of the slug table). */
  removeTenant (t: number): void {
    this.state[t] = GONE
    this.hold.delete(t)
    this.arena.release(this.slug[t] as number)
    this.arena.release(this.dbName[t] as number)
    this.arena.release(this.primary[t] as number)
    this.live--
  }

  /** Rebuilds the arena with only the strings in use, once enough of it is dead. */
  compactIfWasteful (): void {
    const old = this.arena
    if (old.dead < COMPACT_DEAD_BYTES || old.dead * 2 < old.used) return
    const arena = new StringArena(old.used - old.dead + 1024)
    // A domain sharing its tenant's primary string (compared as old references) shares the new one.
    const shared: number[] = []
    for (const d of this.hostTable.rows()) {
      const t = this.tenant[d] as number
      if (this.state[t] !== GONE && this.host[d] === this.primary[t]) shared.push(d)
      else this.host[d] = arena.add(decodeRef(old, this.host[d] as number) as string)
    }
    for (let t = 0; t < this.tenants; t++) {
      if (this.state[t] === GONE) continue
      this.slug[t] = arena.add(decodeRef(old, this.slug[t] as number) as string)
      this.dbName[t] = arena.add(decodeRef(old, this.dbName[t] as number) as string)
      const p = this.primary[t] as number
      this.primary[t] = p === NO_STRING ? NO_STRING : arena.add(decodeRef(old, p) as string)
    }
    for (const d of shared) this.host[d] = this.primary[this.tenant[d] as number] as number
    this.arena = arena
    // Cached routes keep the old buffer (they read their strings from it); new ones read the new one.
  }

  #growTenants (): void {
    this.#resizeTenants(this.id.length + Math.max(1024, this.id.length >> 2))
  }

  /**
   * Gives back column space a paged build grew past its rows (a quarter at most, a build from one
   * snapshot none), keeping room for the deltas to come.
   */
  trim (): void {
    const want = this.tenants + Math.max(1024, this.tenants >> 5)
    if (this.id.length > want + (want >> 3)) this.#resizeTenants(want)
    const wantDomains = this.domains + Math.max(1024, this.domains >> 5)
    if (this.host.length > wantDomains + (wantDomains >> 3)) this.#resizeDomains(wantDomains)
  }

  #resizeTenants (cap: number): void {
    this.id = resized(this.id, new Float64Array(cap))
    this.epoch = resized(this.epoch, new Float64Array(cap))
    this.generation = resized(this.generation, new Float64Array(cap))
    this.port = resized(this.port, new Uint16Array(cap))
    this.state = resized(this.state, new Uint8Array(cap))
    this.dbHost = resized(this.dbHost, new Uint32Array(cap))
    this.upstream = resized(this.upstream, new Uint32Array(cap))
    this.slug = resized(this.slug, new Int32Array(cap))
    this.dbName = resized(this.dbName, new Int32Array(cap))
    this.primary = resized(this.primary, new Int32Array(cap))
  }

  #growDomains (): void {
    this.#resizeDomains(this.host.length + Math.max(1024, this.host.length >> 2))
  }

  #resizeDomains (cap: number): void {
    this.host = resized(this.host, new Int32Array(cap))
    this.tenant = resized(this.tenant, new Int32Array(cap))
  }
}

/** The typed arrays of Columns (each at least as long as its rows). */
interface ColumnArrays {
  id: Float64Array
  epoch: Float64Array
  generation: Float64Array
  port: Uint16Array
  state: Uint8Array
  dbHost: Uint32Array
  upstream: Uint32Array
  slug: Int32Array
  dbName: Int32Array
  primary: Int32Array
  host: Int32Array
  tenant: Int32Array
}

function allocateColumns (tenants: number, domains: number): ColumnArrays {
  const t = Math.max(16, tenants)
  const d = Math.max(16, domains)
  return {
    id: new Float64Array(t),
    epoch: new Float64Array(t),
    generation: new Float64Array(t),
    port: new Uint16Array(t),
    state: new Uint8Array(t),
    dbHost: new Uint32Array(t),
    upstream: new Uint32Array(t),
    slug: new Int32Array(t),
    dbName: new Int32Array(t),
    primary: new Int32Array(t),
    host: new Int32Array(d),
    tenant: new Int32Array(d)
  }
}

/** `next` holding the start of `old` (as much as fits). */
function resized<T extends Float64Array | Uint32Array | Int32Array | Uint16Array | Uint8Array> (old: T, next: T): T {
  next.set(old.length <= next.length ? old : old.subarray(0, next.length))
  return next
}

function stateCode (state: TenantState): number {
  const code = TENANT_STATES.indexOf(state)
  if (code === -1) throw new Error(`unknown tenant state ${String(state)}`)
  return code
}

/** hostname → route over the domain rows. */
class HostMap implements RouteMap {
  readonly #c: Columns
  constructor (c: Columns) { this.#c = c }
  get size (): number { return this.#c.hostTable.size }
  get (host: string): Route | undefined {
    const c = this.#c
    const d = c.findDomain(host)
    if (d === -1) return undefined
    const t = c.tenant[d] as number
    return c.state[t] === GONE ? undefined : c.route(t)
  }

  has (host: string): boolean { return this.#c.findDomain(host) !== -1 }
  * keys (): IterableIterator<string> { for (const d of this.#c.hostTable.rows()) yield decodeRef(this.#c.arena, this.#c.host[d] as number) as string }
  * values (): IterableIterator<Route> { for (const [, r] of this.entries()) yield r }
  * entries (): IterableIterator<[string, Route]> {
    const c = this.#c
    for (const d of c.hostTable.rows()) {
      const t = c.tenant[d] as number
      if (c.state[t] !== GONE) yield [decodeRef(c.arena, c.host[d] as number) as string, c.makeRoute(t)]
    }
  }

  [Symbol.iterator] (): IterableIterator<[string, Route]> { return this.entries() }
}

/** slug → route over the tenant rows, in row order. */
class SlugMap implements RouteMap {
  readonly #c: Columns
  constructor (c: Columns) { this.#c = c }
  get size (): number { return this.#c.slugTable.size }
  get (slug: string): Route | undefined {
    const t = this.#c.findTenant(slug)
    return t === -1 ? undefined : this.#c.route(t)
  }

  has (slug: string): boolean { return this.#c.findTenant(slug) !== -1 }
  * keys (): IterableIterator<string> {
    const c = this.#c
    // Row order, read afresh at every step: a delta applied between two steps may grow the columns.
    for (let t = 0; t < c.tenants; t++) if (c.state[t] !== GONE) yield decodeRef(c.arena, c.slug[t] as number) as string
  }

  * values (): IterableIterator<Route> {
    const c = this.#c
    for (let t = 0; t < c.tenants; t++) if (c.state[t] !== GONE) yield c.makeRoute(t)
  }

  * entries (): IterableIterator<[string, Route]> {
    const c = this.#c
    for (let t = 0; t < c.tenants; t++) if (c.state[t] !== GONE) yield [decodeRef(c.arena, c.slug[t] as number) as string, c.makeRoute(t)]
  }

  [Symbol.iterator] (): IterableIterator<[string, Route]> { return this.entries() }
}

class CompactIndex implements RegistryIndex {
  version: number
  readonly byHost: RouteMap
  readonly bySlug: RouteMap
  readonly slugOrder: SlugOrder
  readonly columns: Columns

  constructor (version: number, readonly registryId: string, readonly loadedAt: number, columns: Columns) {
    this.version = version
    this.columns = columns
    this.byHost = new HostMap(columns)
    this.bySlug = new SlugMap(columns)
    this.slugOrder = new SlugOrder(() => this.bySlug.keys())
  }
}

function columnsOf (index: RegistryIndex): Columns {
  if (!(index instanceof CompactIndex)) throw new Error('not an index made by buildIndex')
  return index.columns
}

/**
 * Builds an index from a snapshot; null database host/port take the configured default server.
 * Tenants equal to the previous index's keep their generation, so descriptors cached for them
 * stay valid.
 */
export function buildIndex (snapshot: Pick<RegistrySnapshot, 'version' | 'registryId' | 'tenants' | 'domains'>, defaults: DatabaseDefaults, previous: RegistryIndex | null = null, now = Date.now()): RegistryIndex {
  const builder = new IndexBuilder({ version: snapshot.version, registryId: snapshot.registryId, loadedAt: now }, defaults, previous, { tenants: snapshot.tenants.length, domains: snapshot.domains.length })
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
  readonly #previous: Columns | null
  #columns: Columns | null
  /** Tenant id → row only while building: domains name their tenant by id. */
  readonly #byId: IdTable

  /**
   * `expected`: row counts when known (a load from one snapshot), to size the columns once; a
   * builder beside a served index is sized from it (see sizeFor). `reserved`: the memory, when
   * IndexBuilder.beside allocated it already.
   */
  constructor (meta: IndexMeta, defaults: DatabaseDefaults, previous: RegistryIndex | null = null, expected: { tenants: number, domains: number } = { tenants: 0, domains: 0 }, reserved?: Reserved) {
    this.#meta = meta
    this.#defaults = defaults
    const prev = previous === null ? null : columnsOf(previous)
    this.#previous = prev
    const size = reserved?.size ?? sizeFor(expected, prev)
    this.#columns = reserved === undefined
      ? new Columns(size.tenants, size.domains, new StringArena(size.arenaBytes))
      : new Columns(size.tenants, size.domains, StringArena.over(reserved.arena, 0, [], 0), reserved.arrays, { host: new KeyTable(size.domains, reserved.hostSlots), slug: new KeyTable(size.tenants, reserved.slugSlots) })
    this.#byId = new IdTable(size.tenants, reserved?.idSlots)
  }

  /**
   * A builder beside the served index `previous`, its memory allocated and touched a few
   * megabytes per turn of the event loop. Allocated at once, the ~100 MB a million tenants take
   * held the loop for 50 ms: V8 collects for the new external memory as it is allocated, and the
   * first pages of the load then page-faulted through the fresh hash tables (random writes).
   */
  static async beside (meta: IndexMeta, defaults: DatabaseDefaults, previous: RegistryIndex | null): Promise<IndexBuilder> {
    const size = sizeFor({ tenants: 0, domains: 0 }, previous === null ? null : columnsOf(previous))
    const t = Math.max(16, size.tenants)
    const d = Math.max(16, size.domains)
    const arrays: ColumnArrays = {
      id: await touched(new Float64Array(t)),
      epoch: await touched(new Float64Array(t)),
      generation: await touched(new Float64Array(t)),
      port: await touched(new Uint16Array(t)),
      state: await touched(new Uint8Array(t)),
      dbHost: await touched(new Uint32Array(t)),
      upstream: await touched(new Uint32Array(t)),
      slug: await touched(new Int32Array(t)),
      dbName: await touched(new Int32Array(t)),
      primary: await touched(new Int32Array(t)),
      host: await touched(new Int32Array(d)),
      tenant: await touched(new Int32Array(d))
    }
    const reserved: Reserved = {
      size,
      arrays,
      hostSlots: await touched(new Int32Array(KeyTable.slotsFor(size.domains))),
      slugSlots: await touched(new Int32Array(KeyTable.slotsFor(size.tenants))),
      idSlots: await touched(new Int32Array(KeyTable.slotsFor(size.tenants))),
      arena: await touched(new Uint8Array(Math.max(16, size.arenaBytes)))
    }
    return new IndexBuilder(meta, defaults, previous, undefined, reserved)
  }

  addTenants (rows: Iterable<TenantRow>): void {
    const c = this.#building()
    const prev = this.#previous
    for (const t of rows) {
      const hash = hashString(t.slug)
      if (c.slugTable.find(c.arena, c.slug, t.slug, hash) !== -1) continue
      const row = c.tenants
      const dbHost = t.databaseHost ?? this.#defaults.defaultHost
      const dbPort = t.databasePort ?? this.#defaults.defaultPort
      const p = prev === null ? -1 : prev.findTenant(t.slug)
      c.setTenant(row, t, dbHost, dbPort, p !== -1 && prev?.same(p, t, dbHost, dbPort) === true ? prev.generation[p] as number : ++generations)
      c.slugTable.insert(c.arena, c.slug, row, hash)
      this.#byId.insert(c.id, row)
    }
  }

  addDomains (rows: Iterable<DomainRow>): void {
    const c = this.#building()
    for (const d of rows) {
      const row = this.#byId.find(c.id, d.tenantId)
      if (row !== -1) c.setDomain(d.hostname, row)
    }
  }

  /** The index; the builder is done. */
  finish (): RegistryIndex {
    const c = this.#building()
    this.#columns = null
    c.trim()
    return new CompactIndex(this.#meta.version, this.#meta.registryId, this.#meta.loadedAt, c)
  }

  #building (): Columns {
    if (this.#columns === null) throw new Error('IndexBuilder used after finish()')
    return this.#columns
  }
}

/** The sizes a builder allocates for. */
interface BuildSize { tenants: number, domains: number, arenaBytes: number }

/** Memory IndexBuilder.beside allocated for a builder. */
interface Reserved {
  size: BuildSize
  arrays: ColumnArrays
  hostSlots: Int32Array
  slugSlots: Int32Array
  idSlots: Int32Array
  arena: Uint8Array
}

/**
 * What a builder allocates: the expected counts when known (about 30 bytes of strings per tenant
 * and 20 per extra domain: one arena growth at most), else the size of the index it replaces and
 * a sixteenth more, because growing a hash table rehashes every key in one go (150–220 ms at a
 * million tenants), which would stall the requests served meanwhile.
 */
function sizeFor (expected: { tenants: number, domains: number }, prev: Columns | null): BuildSize {
  if (expected.tenants === 0 && prev !== null) {
    const margin = (n: number): number => n + (n >> 4) + 1024
    return { tenants: margin(prev.live), domains: margin(prev.hostTable.size), arenaBytes: margin(prev.arena.used - prev.arena.dead) }
  }
  return { ...expected, arenaBytes: expected.tenants * 32 + Math.max(0, expected.domains - expected.tenants) * 20 }
}

/** Bytes of fresh memory written (so paged in) per turn of the event loop: about a millisecond. */
const TOUCH_SLICE = 4 << 20

/** `array`, its pages faulted in a slice at a time with a yield between slices (zero stays zero). */
async function touched<T extends Float64Array | Uint32Array | Int32Array | Uint16Array | Uint8Array> (array: T): Promise<T> {
  const bytes = new Uint8Array(array.buffer, array.byteOffset, array.byteLength)
  for (let at = 0; at < bytes.length; at += TOUCH_SLICE) {
    bytes.fill(0, at, Math.min(bytes.length, at + TOUCH_SLICE))
    await new Promise<void>((resolve) => setImmediate(resolve))
  }
  return array
}

/**
 * Tenant id → row while building, open addressing over the id column: 4 bytes a slot at a load of
 * at most one half, where a Map of a million numbers holds about 40 MB until the build ends.
 */
class IdTable {
  #slots: Int32Array
  #size = 0

  /** `slots`: a zeroed array of KeyTable.slotsFor(expected) (the same load factor), when preallocated. */
  constructor (expected: number, slots: Int32Array = new Int32Array(KeyTable.slotsFor(expected))) {
    this.#slots = slots
  }

  find (ids: Float64Array, id: number): number {
    const slots = this.#slots
    const mask = slots.length - 1
    for (let i = idHash(id) & mask; ; i = (i + 1) & mask) {
      const v = slots[i] as number
      if (v === 0) return -1
      if (ids[v - 1] === id) return v - 1
    }
  }

  /** Adds row `row` under ids[row] (ids are unique in a snapshot). */
  insert (ids: Float64Array, row: number): void {
    if ((this.#size + 1) * 2 > this.#slots.length) {
      const old = this.#slots
      this.#slots = new Int32Array(old.length * 2)
      this.#size = 0
      for (const v of old) if (v !== 0) this.insert(ids, v - 1)
    }
    const slots = this.#slots
    const mask = slots.length - 1
    let i = idHash(ids[row] as number) & mask
    while (slots[i] !== 0) i = (i + 1) & mask
    slots[i] = row + 1
    this.#size++
  }
}

/** A 32-bit mix of an integer id (ids may exceed 2^32: the high part is mixed in). */
function idHash (id: number): number {
  return Math.imul((id | 0) ^ Math.imul((id / 4294967296) | 0, 0x85ebca6b), 0x9e3779b1) >>> 16 ^ (id | 0)
}

/**
 * An index's columns as the snapshot file stores them: tenant rows (deleted ones included: a row
 * number is what a domain row names), domain rows (free ones included), the arena's bytes and the
 * few strings held outside it. Generations are not part of it: they mean something only within
 * one process.
 */
export interface IndexColumns {
  readonly tenantRows: number
  readonly id: Float64Array
  readonly epoch: Float64Array
  readonly port: Uint16Array
  readonly state: Uint8Array
  readonly dbHost: Uint32Array
  readonly upstream: Uint32Array
  readonly slug: Int32Array
  readonly dbName: Int32Array
  readonly primary: Int32Array
  readonly domainRows: number
  readonly host: Int32Array
  readonly tenant: Int32Array
  readonly arena: Uint8Array
  readonly arenaUsed: number
  /** Arena side strings (not short ASCII), by position. */
  readonly odd: readonly string[]
  /** Interned database hosts and upstream names, by position. */
  readonly strings: readonly string[]
  /** [tenant row, hold ms] of each paused tenant. */
  readonly hold: ReadonlyArray<readonly [number, number]>
}

/**
 * The columns of `index`, as views of its arrays cut to the rows in use: valid until the index
 * changes (a writer copies them out before the next delta, or checks nothing changed meanwhile).
 */
export function indexColumns (index: RegistryIndex): IndexColumns {
  const c = columnsOf(index)
  const t = c.tenants
  const d = c.domains
  return {
    tenantRows: t,
    id: c.id.subarray(0, t),
    epoch: c.epoch.subarray(0, t),
    port: c.port.subarray(0, t),
    state: c.state.subarray(0, t),
    dbHost: c.dbHost.subarray(0, t),
    upstream: c.upstream.subarray(0, t),
    slug: c.slug.subarray(0, t),
    dbName: c.dbName.subarray(0, t),
    primary: c.primary.subarray(0, t),
    domainRows: d,
    host: c.host.subarray(0, d),
    tenant: c.tenant.subarray(0, d),
    arena: c.arena.bytes.subarray(0, c.arena.used),
    arenaUsed: c.arena.used,
    odd: [...c.arena.odd],
    strings: [...c.strings],
    hold: [...c.hold]
  }
}

/** Columns that break a rule of the index (out-of-range references, a key named twice, …). */
export class IndexColumnsInvalid extends Error {}

/**
 * An index over `cols`, whose arrays it takes over (each may be longer than its rows: room for
 * the deltas to come). Every reference is checked before anything is served from it, so a file
 * that passed its checksum but breaks a rule (a bug in some writer) is refused, never followed
 * out of bounds; the hash tables are rebuilt from the keys, which also finds a key named twice.
 */
export function indexFromColumns (meta: IndexMeta, cols: IndexColumns): RegistryIndex {
  const { tenantRows: nt, domainRows: nd, arena: bytes, arenaUsed: used, odd } = cols
  const invalid = (what: string): never => { throw new IndexColumnsInvalid(what) }
  const tenantArrays = [cols.id, cols.epoch, cols.port, cols.state, cols.dbHost, cols.upstream, cols.slug, cols.dbName, cols.primary]
  if (!Number.isSafeInteger(nt) || nt < 0 || tenantArrays.some((a) => a.length < nt)) invalid('tenant columns shorter than their rows')
  if (!Number.isSafeInteger(nd) || nd < 0 || cols.host.length < nd || cols.tenant.length < nd) invalid('domain columns shorter than their rows')
  if (!Number.isSafeInteger(used) || used < 0 || used > bytes.length) invalid('arena shorter than its bytes in use')
  // Bytes in use by live strings, so that the arena knows its dead bytes (compactIfWasteful).
  let liveBytes = 0
  const stringRef = (ref: number, optional: boolean, what: string, row: number): void => {
    if (ref === NO_STRING) {
      if (!optional) invalid(`${what} of row ${row} missing`)
      return
    }
    if (ref < 0) {
      if (-1 - ref >= odd.length || typeof odd[-1 - ref] !== 'string') invalid(`${what} of row ${row} out of range`)
      return
    }
    const end = ref + 1 + (bytes[ref] ?? 0)
    if (ref >= used || end > used) invalid(`${what} of row ${row} out of range`)
    liveBytes += end - ref
  }
  const strings = cols.strings
  if (strings.some((x) => typeof x !== 'string') || new Set(strings).size !== strings.length) invalid('interned strings malformed')
  const generation = new Float64Array(cols.id.length)
  const arrays: ColumnArrays = {
    id: cols.id, epoch: cols.epoch, generation, port: cols.port, state: cols.state, dbHost: cols.dbHost, upstream: cols.upstream,
    slug: cols.slug, dbName: cols.dbName, primary: cols.primary, host: cols.host, tenant: cols.tenant
  }
  const c = new Columns(nt, nd, StringArena.over(bytes, used, odd, 0), arrays)
  for (const x of strings) c.intern(x)
  c.tenants = nt
  c.domains = nd
  const states = TENANT_STATES.length
  for (let t = 0; t < nt; t++) {
    const state = cols.state[t] as number
    if (state === GONE) continue
    if (state >= states) invalid(`state of row ${t} unknown`)
    if (!Number.isSafeInteger(cols.id[t]) || !Number.isFinite(cols.epoch[t])) invalid(`id or epoch of row ${t} malformed`)
    if ((cols.dbHost[t] as number) >= strings.length || (cols.upstream[t] as number) > strings.length) invalid(`database host or upstream of row ${t} out of range`)
    stringRef(cols.slug[t] as number, false, 'slug', t)
    stringRef(cols.dbName[t] as number, false, 'database name', t)
    stringRef(cols.primary[t] as number, true, 'primary domain', t)
    if (!c.slugTable.insertNew(c.arena, c.slug, t)) invalid(`slug of row ${t} named twice`)
    generation[t] = ++generations
    c.live++
  }
  for (let d = 0; d < nd; d++) {
    const t = cols.tenant[d] as number
    if (t === -1 && cols.host[d] === NO_STRING) {
      c.freeDomains.push(d)
      continue
    }
    if (!Number.isInteger(t) || t < 0 || t >= nt) invalid(`tenant of domain row ${d} out of range`)
    const ref = cols.host[d] as number
    // A domain sharing its tenant's primary string was counted with the tenant.
    if (ref !== c.primary[t] || c.state[t] === GONE) stringRef(ref, false, 'hostname', d)
    else if (ref === NO_STRING) invalid(`hostname of domain row ${d} missing`)
    if (!c.hostTable.insertNew(c.arena, c.host, d)) invalid(`hostname of domain row ${d} named twice`)
  }
  for (const [t, ms] of cols.hold) {
    if (!Number.isInteger(t) || t < 0 || t >= nt || c.state[t] === GONE || !(Number.isFinite(ms) && ms >= 0)) invalid('hold times malformed')
    c.hold.set(t, ms)
  }
  c.arena.dead = Math.max(0, used - liveBytes)
  return new CompactIndex(meta.version, meta.registryId, meta.loadedAt, c)
}

/**
 * The tenant's primary domain as the index routes it now, or null. A domain moved to another
 * tenant by a writer other than the CLI (an UPDATE of domains.tenant_id) logs only its new
 * tenant, so the old tenant's route may still name it: it counts only while it routes here.
 */
export function primaryHostOf (index: RegistryIndex, route: Route): string | null {
  const host = route.primaryHost
  if (host === null) return null
  const c = columnsOf(index)
  const d = c.findDomain(host)
  return d !== -1 && c.id[c.tenant[d] as number] === route.id && c.state[c.tenant[d] as number] !== GONE ? host : null
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
 * rows are found by slug; any row found there belongs to a touched tenant, because a slug only
 * moves between tenants that were both written.
 */
export function applyDelta (index: RegistryIndex, delta: Extract<RegistryDelta, { complete: true }>, defaults: DatabaseDefaults): DeltaResult {
  const c = columnsOf(index)
  // Only slugs the delta names can appear or vanish; note which were there before.
  const named = index.slugOrder.tracking ? [...new Set([...delta.tenantSlugs, ...delta.tenants.map((t) => t.slug)])] : []
  const had = named.map((slug) => c.findTenant(slug) !== -1)
  // Tenant id → row of every tenant the delta names by slug, taken out of the slug table.
  const old = new Map<number, number>()
  for (const slug of delta.tenantSlugs) {
    const t = c.slugTable.remove(c.arena, c.slug, slug, hashString(slug))
    if (t !== -1) old.set(c.id[t] as number, t)
  }
  for (const row of delta.tenants) {
    const dbHost = row.databaseHost ?? defaults.defaultHost
    const dbPort = row.databasePort ?? defaults.defaultPort
    // A tenant touched only through its domains still sits at its slug.
    let t = old.get(row.id) ?? -1
    const atSlug = c.findTenant(row.slug)
    if (t === -1 && atSlug !== -1 && c.id[atSlug] === row.id) t = atSlug
    if (t !== -1) old.delete(row.id)
    if (atSlug !== -1 && atSlug !== t) {
      // The slug is held by a row of another id (a writer that did not log it): that row goes.
      c.slugTable.remove(c.arena, c.slug, row.slug, hashString(row.slug))
      c.removeTenant(atSlug)
    }
    if (t !== -1 && c.same(t, row, dbHost, dbPort)) {
      if (atSlug !== t) c.slugTable.insert(c.arena, c.slug, t, hashString(row.slug))
      continue
    }
    if (t !== -1 && atSlug === t) c.slugTable.remove(c.arena, c.slug, row.slug, hashString(row.slug))
    // Changed in place (domains pointing at the row follow), or a new row.
    const target = t === -1 ? c.tenants : t
    c.setTenant(target, row, dbHost, dbPort, ++generations)
    c.slugTable.insert(c.arena, c.slug, target, hashString(row.slug))
  }
  // Named and not in the delta's rows: deleted.
  for (const t of old.values()) c.removeTenant(t)
  let consistent = true
  const present = new Set<string>()
  for (const d of delta.domains) {
    const t = c.findTenant(d.slug)
    if (t === -1) {
      consistent = false
      continue
    }
    c.setDomain(d.hostname, t)
    present.add(d.hostname)
  }
  const removedHosts: string[] = []
  for (const hostname of delta.hostnames) {
    if (!present.has(hostname) && c.removeDomain(hostname)) removedHosts.push(hostname)
  }
  c.compactIfWasteful()
  index.version = delta.version
  const edits: SlugEdit[] = []
  for (const [i, slug] of named.entries()) {
    const has = c.findTenant(slug) !== -1
    if (has !== had[i]) edits.push([slug, has])
  }
  index.slugOrder.apply(edits)
  return { removedHosts, consistent }
}
