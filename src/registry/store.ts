/**
 * All SQL against the tenant registry. Every write is one transaction; database errors are mapped
 * to catalogue errors that name the conflicting value, so the CLI can print one clear line.
 */
import type pg from 'pg'
import { tpError } from '../errors.js'
import type { TenantState } from './names.js'
import { quoteIdent } from './sql.js'
import { databaseLabel, formatProblems, type ImportProblem } from './problems.js'
import type { ImportEntry, TransferTenant } from './transfer.js'
import type { AdoptCandidate } from './adopt.js'

export type DomainKind = 'primary' | 'alias'

/** A tenant as the CLI shows it (`--json` output is this shape, keys in this order). */
export interface TenantRecord {
  slug: string
  state: TenantState
  database_name: string
  database_host: string | null
  database_port: number | null
  /** The registry database server (`servers add`) the tenant names; its host and port are copied into database_host/port. */
  database_server: string | null
  upstream: string | null
  epoch: number
  /** Non-null while the tenant is paused (`tenants pause`): proxies hold its requests up to this many ms. */
  paused_hold_ms: number | null
  settings: Record<string, unknown>
  domains: Array<{ hostname: string, kind: DomainKind }>
  created_at: string
  updated_at: string
}

/** What `registry adopt` did with one candidate. */
export interface AdoptOutcome {
  readonly key: string
  readonly slug: string
  readonly action: 'created' | 'updated' | 'unchanged' | 'refused' | 'differs'
  readonly reason: string | null
}

/** A database server as `servers list --json` shows it. Credentials are references, never values. */
export interface ServerRecord {
  name: string
  host: string
  port: number
  /** Name of the environment variable holding the admin URL (resolved by the CLI that needs it). */
  admin_url_env: string | null
  /** Path of the file holding the admin URL. */
  admin_url_file: string | null
  /** Default owner role of databases created on this server. */
  owner: string | null
  /** Tenants naming this server. */
  tenants: number
  created_at: string
  updated_at: string
}

/** Input of `servers add`. */
export interface NewServer {
  name: string
  host: string
  port: number
  adminUrlEnv: string | null
  adminUrlFile: string | null
  owner: string | null
}

/** Fields `servers update` may change; undefined leaves a field as it is, null clears it. */
export interface ServerPatch {
  host?: string
  port?: number
  adminUrlEnv?: string | null
  adminUrlFile?: string | null
  owner?: string | null
}

/** Input of `tenants add`; hostnames must already be canonical. */
export interface NewTenant {
  slug: string
  databaseName: string
  databaseHost: string | null
  databasePort: number | null
  state: TenantState
  upstream: string | null
  settings: Record<string, unknown>
  domains: readonly string[]
  /** A registry database server; its host and port replace databaseHost/databasePort. */
  databaseServer?: string | null
}

/** Fields `tenants update` may change; undefined leaves a field as it is, null clears it. */
export interface TenantPatch {
  databaseName?: string
  databaseHost?: string | null
  databasePort?: number | null
  state?: TenantState
  upstream?: string | null
  settings?: Record<string, unknown>
  epoch?: 'bump'
  /** A registry database server (null: none; the tenant keeps its host and port as given). */
  databaseServer?: string | null
  /** Pause the tenant, holding requests up to this many ms (null: resume). */
  pausedHoldMs?: number | null
}

/**
 * The outcome of a write and the registry version it committed as: the version a proxy must have
 * applied to route by it (`--wait`).
 */
export interface Written<T> {
  readonly result: T
  readonly version: number
}

/** A consistent copy of the whole registry, read in one snapshot transaction. */
export interface RegistrySnapshot {
  version: number
  /** Names the registry (see migration 002). */
  registryId: string
  tenants: TenantRow[]
  domains: DomainRow[]
}

/**
 * A tenant as the index needs it. `primaryHost` is its primary domain (the host of descriptors
 * issued outside a request, src/ops/descriptor-api.ts); null when the tenant has none, which only
 * a writer other than the CLI can leave behind.
 */
export interface TenantRow {
  id: number, slug: string, databaseName: string, databaseHost: string | null, databasePort: number | null, state: TenantState, upstream: string | null, epoch: number, primaryHost: string | null
  /**
   * Non-null while the tenant is paused: how long a proxy holds one of its requests (migration 004).
   * Null in rows read from a last-known-good snapshot file older than format version 3.
   */
  holdMs?: number | null
}

/** A domain as the index needs it. */
export interface DomainRow { hostname: string, tenantId: number }

/**
 * What changed after a version, read in one statement (one snapshot): the current rows of
 * every tenant and domain touched after `since`, up to `version`. Applying it to an index at
 * `since` gives the index at `version`. `complete` is false when the log cannot tell (rows pruned
 * past `since`: 'gap'; more changes than `limit`: 'backlog'): the caller loads a full snapshot instead.
 */
export type RegistryDelta =
  | { complete: true, since: number, version: number, registryId: string, changes: number, tenantSlugs: string[], tenants: TenantRow[], hostnames: string[], domains: Array<{ hostname: string, slug: string }> }
  | { complete: false, since: number, version: number, registryId: string, reason: 'gap' | 'backlog' }

/** A delta that says what changed (the log covered the gap). */
export type CompleteDelta = Extract<RegistryDelta, { complete: true }>

/** A tenant as tenantSelect's columns; ids and epochs are bigint, so text, except inside JSON (numbers). */
export type TenantTuple = [string | number, string, string, string | null, number | null, TenantState, string | null, string | number, string | null, number | null]

/** The delta statement's one row: the registry's head, the change count, then JSON row sets (null when empty). */
type DeltaRow = [string, string, string, number, ...DeltaRows]

/**
 * What a delta names, as the delta statement and a change announcement (migration 005) both send
 * it: slugs and hostnames named by the change rows, then the touched tenants' and domains' current
 * rows (null when none).
 */
export type DeltaRows = [string[] | null, string[] | null, TenantTuple[] | null, Array<[string, string]> | null]

/** A complete delta from `since` to `version` from the rows the registry sent. */
export function completeDelta (since: number, version: number, registryId: string, changes: number, [tenantSlugs, hostnames, tenants, domains]: DeltaRows): CompleteDelta {
  return {
    complete: true,
    since,
    version,
    registryId,
    changes,
    tenantSlugs: [...new Set(tenantSlugs ?? [])],
    tenants: (tenants ?? []).map(tenantRow),
    hostnames: hostnames ?? [],
    domains: (domains ?? []).map(([hostname, slug]) => ({ hostname, slug }))
  }
}

/**
 * The tenant columns the index reads, with the primary domain joined in (the partial unique index
 * domains_one_primary_key allows at most one per tenant, so the join never duplicates a tenant).
 * Callers append WHERE clauses on `t`.
 */
function tenantSelect (s: string, joinBound = ''): string {
  return `SELECT t.id, t.slug, t.database_name, t.database_host, t.database_port, t.state, t.upstream, t.epoch, p.hostname, t.paused_hold_ms
    FROM ${s}.tenants t LEFT JOIN ${s}.domains p ON p.tenant_id = t.id AND p.kind = 'primary'${joinBound}`
}

function tenantRow ([id, slug, databaseName, databaseHost, databasePort, state, upstream, epoch, primaryHost, holdMs]: TenantTuple): TenantRow {
  return { id: Number(id), slug, databaseName, databaseHost, databasePort, state, upstream, epoch: Number(epoch), primaryHost, holdMs }
}

/**
 * The delta statement of one schema (see RegistryStore.delta), built once per store: the change
 * rows' count and what they name as arrays, then the touched tenants and domains as JSON (one
 * JSON.parse per column), read by index with the arrays as `= ANY` (an `IN (subquery)` on the
 * domains' OR turned into a sequential scan of every domain: 95 ms at 100,000 tenants). A gap or
 * a backlog leaves the row sets empty.
 */
function deltaSql (s: string): string {
  const covered = 'st.pruned_through <= $1 AND k.n <= $2::int'
  return `WITH c AS (SELECT entity, key, tenant_id FROM ${s}.changes WHERE version > $1 ORDER BY id LIMIT $2::int + 1),
    k AS (SELECT count(*)::int AS n,
            array_agg(DISTINCT tenant_id) FILTER (WHERE tenant_id IS NOT NULL) AS ids,
            array_agg(DISTINCT key) FILTER (WHERE entity <> 'domain') AS slugs,
            array_agg(DISTINCT key) FILTER (WHERE entity = 'domain') AS hosts
          FROM c),
    paused AS (SELECT array_agg(id) AS ids, array_agg(slug) AS slugs FROM ${s}.tenants WHERE $3::boolean AND paused_hold_ms IS NOT NULL)
    SELECT st.version, st.registry_id, st.pruned_through, k.n, k.slugs || paused.slugs, k.hosts,
      (SELECT json_agg(json_build_array(x.id, x.slug, x.database_name, x.database_host, x.database_port, x.state, x.upstream, x.epoch, x.hostname, x.paused_hold_ms))
         FROM (${tenantSelect(s)} WHERE t.id = ANY(k.ids || paused.ids) AND ${covered}) x),
      -- Every domain of a touched tenant (its route object changes) and every touched hostname.
      (SELECT json_agg(json_build_array(d.hostname, t.slug)) FROM ${s}.domains d JOIN ${s}.tenants t ON t.id = d.tenant_id
         WHERE (d.tenant_id = ANY(k.ids || paused.ids) OR d.hostname = ANY(k.hosts)) AND ${covered})
    FROM ${s}.registry_state st, k, paused`
}

/** What a write is about, for naming it in constraint errors. */
interface Subject { slug: string | null, databaseName: string | null, domains: readonly string[], server?: string | null }

/** SQL access to one registry schema over an injected pool. */
export class RegistryStore {
  readonly #pool: pg.Pool
  readonly #s: string

  readonly #deltaSql: string

  constructor (pool: pg.Pool, schema: string) {
    this.#pool = pool
    this.#s = quoteIdent(schema)
    this.#deltaSql = deltaSql(this.#s)
  }

  /** Every tenant with its domains, by slug. */
  async listTenants (): Promise<TenantRecord[]> {
    const r = await this.#pool.query<TenantRecord>(`${this.#selectTenants()} ORDER BY t.slug`)
    return r.rows.map(normalize)
  }

  /** The tenant with this slug, or the one owning this canonical hostname; null when none. */
  async findTenant (slugOrHost: string): Promise<TenantRecord | null> {
    const r = await this.#pool.query<TenantRecord>(
      `${this.#selectTenants()} WHERE t.slug = $1 OR t.id = (SELECT tenant_id FROM ${this.#s}.domains WHERE hostname = $1)`, [slugOrHost])
    const row = r.rows[0]
    return row === undefined ? null : normalize(row)
  }

  /** Creates a tenant and its domains (the first is primary) in one transaction. */
  async addTenant (input: NewTenant): Promise<Written<TenantRecord>> {
    return await this.#write(async (c) => {
      const r = await c.query<{ id: string }>(
        `INSERT INTO ${this.#s}.tenants (slug, database_name, database_host, database_port, state, upstream, settings, database_server)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id`,
        [input.slug, input.databaseName, input.databaseHost, input.databasePort, input.state, input.upstream, JSON.stringify(input.settings), input.databaseServer ?? null])
      const id = r.rows[0]?.id
      for (const [i, hostname] of input.domains.entries()) {
        await c.query(`INSERT INTO ${this.#s}.domains (hostname, tenant_id, kind) VALUES ($1, $2, $3)`, [hostname, id, i === 0 ? 'primary' : 'alias'])
      }
      return await this.#mustFind(c, input.slug)
    }, { slug: input.slug, databaseName: input.databaseName, domains: input.domains })
  }

  /** Changes the given fields of one tenant. */
  async updateTenant (slug: string, patch: TenantPatch): Promise<Written<TenantRecord>> {
    const sets: string[] = []
    const values: unknown[] = []
    const set = (column: string, value: unknown): void => {
      values.push(value)
      sets.push(`${column} = $${values.length}`)
    }
    if (patch.databaseName !== undefined) set('database_name', patch.databaseName)
    if (patch.databaseHost !== undefined) set('database_host', patch.databaseHost)
    if (patch.databasePort !== undefined) set('database_port', patch.databasePort)
    if (patch.state !== undefined) set('state', patch.state)
    if (patch.upstream !== undefined) set('upstream', patch.upstream)
    if (patch.settings !== undefined) set('settings', JSON.stringify(patch.settings))
    if (patch.epoch === 'bump') sets.push('epoch = epoch + 1')
    if (patch.databaseServer !== undefined) set('database_server', patch.databaseServer)
    if (patch.pausedHoldMs !== undefined) set('paused_hold_ms', patch.pausedHoldMs)
    if (sets.length === 0) throw tpError('TENANT_PROXY_ERR_CLI_USAGE', ['nothing to update: give at least one option such as --database or --state'])
    return await this.#write(async (c) => {
      values.push(slug)
      const r = await c.query(`UPDATE ${this.#s}.tenants SET ${sets.join(', ')} WHERE slug = $${values.length}`, values)
      if (r.rowCount === 0) throw tpError('TENANT_PROXY_ERR_TENANT_NOT_FOUND', [slug])
      return await this.#mustFind(c, slug)
    }, { slug, databaseName: patch.databaseName ?? null, domains: [] })
  }

  /**
   * Pauses (holdMs) or resumes (null) a tenant, checked under the row lock: a pause is refused
   * (TENANT_PROXY_ERR_TENANT_NOT_ACTIVE) unless the tenant is active and, with `unlessPaused`,
   * not paused already, so two moves cannot both believe they paused it.
   */
  async setPause (slug: string, holdMs: number | null, opts: { unlessPaused?: boolean } = {}): Promise<Written<TenantRecord>> {
    return await this.#write(async (c) => {
      const r = await c.query<{ state: TenantState, paused_hold_ms: number | null }>(`SELECT state, paused_hold_ms FROM ${this.#s}.tenants WHERE slug = $1 FOR UPDATE`, [slug])
      const row = r.rows[0]
      if (row === undefined) throw tpError('TENANT_PROXY_ERR_TENANT_NOT_FOUND', [slug])
      if (holdMs !== null && row.state !== 'active') throw tpError('TENANT_PROXY_ERR_TENANT_NOT_ACTIVE', [slug, row.state, 'only an active tenant is paused (a suspended or maintenance one is not routed anyway)'])
      if (holdMs !== null && opts.unlessPaused === true && row.paused_hold_ms !== null) {
        throw tpError('TENANT_PROXY_ERR_TENANT_NOT_ACTIVE', [slug, 'paused', 'another pause or move is under way (tenants resume ends a pause)'])
      }
      if (row.paused_hold_ms !== holdMs) await c.query(`UPDATE ${this.#s}.tenants SET paused_hold_ms = $2 WHERE slug = $1`, [slug, holdMs])
      return await this.#mustFind(c, slug)
    }, { slug, databaseName: null, domains: [] })
  }

  /**
   * The switch of `tenants move`, one transaction: the tenant names server `to` (its host and port
   * copied by migration 003's trigger), its epoch goes up by one, and its pause ends, so every
   * proxy applies the new database and the release of held requests as one registry version.
   * Refused unless the tenant is still paused where the move found it (`from`).
   */
  async switchServer (slug: string, to: string, from: { host: string, port: number, databaseName: string }): Promise<Written<TenantRecord>> {
    return await this.#write(async (c) => {
      const r = await c.query<{ database_host: string | null, database_port: number | null, database_name: string, paused_hold_ms: number | null }>(
        `SELECT database_host, database_port, database_name, paused_hold_ms FROM ${this.#s}.tenants WHERE slug = $1 FOR UPDATE`, [slug])
      const row = r.rows[0]
      if (row === undefined) throw tpError('TENANT_PROXY_ERR_TENANT_NOT_FOUND', [slug])
      if (row.paused_hold_ms === null || row.database_name !== from.databaseName || (row.database_host ?? from.host) !== from.host || (row.database_port ?? from.port) !== from.port) {
        throw tpError('TENANT_PROXY_ERR_TENANT_NOT_ACTIVE', [slug, 'no longer as the move found it', 'it was resumed or changed by another writer during the move'])
      }
      await c.query(`UPDATE ${this.#s}.tenants SET database_server = $2, database_host = NULL, database_port = NULL, epoch = epoch + 1, paused_hold_ms = NULL WHERE slug = $1`, [slug, to])
      return await this.#mustFind(c, slug)
    }, { slug, databaseName: from.databaseName, domains: [], server: to })
  }

  /** Deletes a tenant and (by cascade) its domains; returns what was removed. */
  async removeTenant (slug: string): Promise<Written<TenantRecord>> {
    return await this.#write(async (c) => {
      const before = await this.#mustFind(c, slug)
      await c.query(`DELETE FROM ${this.#s}.tenants WHERE slug = $1`, [slug])
      return before
    }, { slug, databaseName: null, domains: [] })
  }

  /** Adds a canonical hostname to a tenant; `primary` makes it the primary domain. */
  async addDomain (slug: string, hostname: string, kind: DomainKind): Promise<Written<TenantRecord>> {
    return await this.#write(async (c) => {
      const tenant = await c.query<{ id: string }>(`SELECT id FROM ${this.#s}.tenants WHERE slug = $1 FOR UPDATE`, [slug])
      const id = tenant.rows[0]?.id
      if (id === undefined) throw tpError('TENANT_PROXY_ERR_TENANT_NOT_FOUND', [slug])
      if (kind === 'primary') await c.query(`UPDATE ${this.#s}.domains SET kind = 'alias' WHERE tenant_id = $1 AND kind = 'primary'`, [id])
      const hasPrimary = await c.query(`SELECT 1 FROM ${this.#s}.domains WHERE tenant_id = $1 AND kind = 'primary'`, [id])
      await c.query(`INSERT INTO ${this.#s}.domains (hostname, tenant_id, kind) VALUES ($1, $2, $3)`,
        [hostname, id, hasPrimary.rowCount === 0 ? 'primary' : 'alias'])
      return await this.#mustFind(c, slug)
    }, { slug, databaseName: null, domains: [hostname] })
  }

  /** Removes a hostname; the oldest alias becomes primary when the primary goes. The last domain stays. */
  async removeDomain (hostname: string): Promise<Written<TenantRecord>> {
    return await this.#write(async (c) => {
      const r = await c.query<{ tenant_id: string, kind: DomainKind, slug: string }>(
        `SELECT d.tenant_id, d.kind, t.slug FROM ${this.#s}.domains d JOIN ${this.#s}.tenants t ON t.id = d.tenant_id
         WHERE d.hostname = $1 FOR UPDATE OF t`, [hostname])
      const row = r.rows[0]
      if (row === undefined) throw tpError('TENANT_PROXY_ERR_DOMAIN_NOT_FOUND', [hostname])
      const count = await c.query<{ n: number }>(`SELECT count(*)::int AS n FROM ${this.#s}.domains WHERE tenant_id = $1`, [row.tenant_id])
      if ((count.rows[0]?.n ?? 0) <= 1) throw tpError('TENANT_PROXY_ERR_DOMAIN_LAST', [hostname, row.slug])
      await c.query(`DELETE FROM ${this.#s}.domains WHERE hostname = $1`, [hostname])
      if (row.kind === 'primary') {
        await c.query(`UPDATE ${this.#s}.domains SET kind = 'primary' WHERE hostname =
          (SELECT hostname FROM ${this.#s}.domains WHERE tenant_id = $1 ORDER BY created_at, hostname LIMIT 1)`, [row.tenant_id])
      }
      return await this.#mustFind(c, row.slug)
    }, { slug: null, databaseName: null, domains: [hostname] })
  }

  /** Reads the whole registry at one point in time, for the proxy's in-memory index. */
  async snapshot (): Promise<RegistrySnapshot> {
    return await this.#readOnly(async (c) => {
      const v = await c.query<{ version: string, registry_id: string }>(`SELECT version, registry_id FROM ${this.#s}.registry_state`)
      const t = await c.query<TenantTuple>({ text: tenantSelect(this.#s), rowMode: 'array' })
      const d = await c.query<[string, string]>({ text: `SELECT hostname, tenant_id FROM ${this.#s}.domains`, rowMode: 'array' })
      return {
        version: Number(v.rows[0]?.version ?? 0),
        registryId: v.rows[0]?.registry_id ?? '',
        tenants: t.rows.map(tenantRow),
        domains: d.rows.map(([hostname, tenantId]) => ({ hostname, tenantId: Number(tenantId) }))
      }
    })
  }

  /**
   * The changes after version `since` as current rows (see RegistryDelta); at most `limit` change
   * rows. `client`: run on this connection (the proxy's feed connection) instead of the pool.
   * `paused`: also read every paused tenant as if it had changed (an index from the snapshot file
   * does not know pauses; resuming from it must learn them).
   *
   * One statement, one round trip: a single statement sees one snapshot (READ COMMITTED takes it
   * per statement, https://www.postgresql.org/docs/current/transaction-iso.html#XACT-READ-COMMITTED),
   * so the version, the change log and the rows agree without a transaction. It used to be a
   * REPEATABLE READ transaction of four statements, six round trips per proxy per change: with a
   * dozen proxies on a busy host each round trip waits for a turn on a CPU, twice, and the chain
   * of them was most of the propagation time. The registry counts the change rows and sends
   * rows only when the log covers the gap and holds at most `limit` (a backlog used to send
   * limit + 1 change rows only to be dropped; parsing them held a proxy's event loop ~50 ms).
   */
  async delta (since: number, limit: number, opts: { client?: pg.ClientBase, paused?: boolean } = {}): Promise<RegistryDelta> {
    const r = await (opts.client ?? this.#pool).query<DeltaRow>({ text: this.#deltaSql, values: [since, limit, opts.paused === true], rowMode: 'array' })
    const [version = 0, registryId = '', prunedThrough = 0, changes = 0, ...rows] = r.rows[0] ?? []
    if (Number(prunedThrough) > since) return { complete: false, since, version: Number(version), registryId, reason: 'gap' }
    if (changes > limit) return { complete: false, since, version: Number(version), registryId, reason: 'backlog' }
    return completeDelta(since, Number(version), registryId, changes, rows.length === 4 ? rows : [null, null, null, null])
  }

  /** The registry's version, id and how far its change log was pruned; the head of a paged snapshot. */
  async head (client?: pg.ClientBase): Promise<{ version: number, registryId: string, prunedThrough: number }> {
    const r = await (client ?? this.#pool).query<{ version: string, registry_id: string, pruned_through: string }>(`SELECT version, registry_id, pruned_through FROM ${this.#s}.registry_state`)
    return { version: Number(r.rows[0]?.version ?? 0), registryId: r.rows[0]?.registry_id ?? '', prunedThrough: Number(r.rows[0]?.pruned_through ?? 0) }
  }

  /**
   * Up to `limit` tenants with an id above `afterId`, by id: one short statement per page (keyset,
   * on the primary key), so no page lasts longer than its own rows take, whatever the registry's size.
   * The primary-domain join repeats the bound on its own side: PostgreSQL derives no inequality
   * across a join, and its merge join otherwise reads the domain index from the first tenant on
   * every page (measured at 1,000,000 tenants, analysed: 80 ms per page in the middle of the load,
   * about 20 s of registry CPU per full load; with the bound 5 ms).
   */
  async tenantPage (afterId: number, limit: number, client?: pg.ClientBase): Promise<TenantRow[]> {
    const r = await (client ?? this.#pool).query<TenantTuple>({ text: `${tenantSelect(this.#s, ' AND p.tenant_id > $1')} WHERE t.id > $1 ORDER BY t.id LIMIT $2`, values: [afterId, limit], rowMode: 'array' })
    return r.rows.map(tenantRow)
  }

  /** Up to `limit` domains with a hostname after `afterHostname`, by hostname (keyset on the primary key). */
  async domainPage (afterHostname: string | null, limit: number, client?: pg.ClientBase): Promise<DomainRow[]> {
    const r = await (client ?? this.#pool).query<[string, string]>({
      text: afterHostname === null
        ? `SELECT hostname, tenant_id FROM ${this.#s}.domains ORDER BY hostname LIMIT $1`
        : `SELECT hostname, tenant_id FROM ${this.#s}.domains WHERE hostname > $2 ORDER BY hostname LIMIT $1`,
      values: afterHostname === null ? [limit] : [limit, afterHostname],
      rowMode: 'array'
    })
    return r.rows.map(([hostname, tenantId]) => ({ hostname, tenantId: Number(tenantId) }))
  }

  /** The registry's version and id (the feed's periodic check). */
  async version (): Promise<{ version: number, registryId: string }> {
    const r = await this.#pool.query<{ version: string, registry_id: string }>(`SELECT version, registry_id FROM ${this.#s}.registry_state`)
    return { version: Number(r.rows[0]?.version ?? 0), registryId: r.rows[0]?.registry_id ?? '' }
  }

  async #readOnly<T> (fn: (c: pg.ClientBase) => Promise<T>, client?: pg.ClientBase): Promise<T> {
    // REPEATABLE READ: every statement sees the same instant (the version and the rows agree).
    const begin = 'BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY'
    if (client !== undefined) return await onClient(client, begin, fn)
    return await this.#transaction(begin, 'COMMIT', fn, null)
  }

  /**
   * Imports parsed input lines in one transaction (bulk statements, so 100,000 rows take seconds).
   * Conflicts with the registry are checked on the same pass as the input's own `problems`, every
   * one reported with its line, and nothing is written if there is any: without `replace`, an
   * existing slug; a domain owned by a tenant outside the import; a database (name, host, port)
   * used by a tenant outside the import. With `replace`, listed tenants are updated and their
   * domain sets replaced. Returns what was created and updated.
   */
  async importTenants (entries: readonly ImportEntry[], opts: { replace: boolean, dryRun: boolean, problems?: readonly ImportProblem[] }): Promise<Written<{ created: number, updated: number }>> {
    try {
      // A dry run does everything, conflicts and constraint checks included, and rolls back.
      return await this.#transaction('BEGIN', opts.dryRun ? 'ROLLBACK' : 'COMMIT', async (c) => {
        const problems = [...opts.problems ?? [], ...await this.#importConflicts(c, entries, opts.replace)]
        if (problems.length > 0) throw tpError('TENANT_PROXY_ERR_IMPORT_INVALID', [formatProblems(problems)])
        const result = await this.#importWrite(c, entries.flatMap((e) => e.tenant === null ? [] : [e.tenant]), opts.replace)
        // For a dry run: the version the import would have committed as.
        return { result, version: await this.#versionIn(c) }
      }, null)
    } catch (err) {
      if ((err as { code?: string }).code !== '23505') throw err
      // Another writer committed a conflicting row between the check and the insert (the insert
      // waited for it, then failed): check again now that it is visible, so the answer names the
      // line and the tenant like any conflict. Nothing was written either way.
      const problems = await this.#readOnly(async (c) => await this.#importConflicts(c, entries, opts.replace))
      if (problems.length === 0) problems.push(await this.#importViolation(err, entries))
      throw tpError('TENANT_PROXY_ERR_IMPORT_INVALID', [formatProblems(problems)], err)
    }
  }

  /** Conflicts of the input lines with the registry, each with its line (see importTenants). */
  async #importConflicts (c: pg.ClientBase, entries: readonly ImportEntry[], replace: boolean): Promise<ImportProblem[]> {
    const problems: ImportProblem[] = []
    // With --replace, a tenant of the import may hand its domain or database to another one.
    const ours = replace ? entries.flatMap((e) => e.slug === null ? [] : [e.slug]) : []
    if (!replace) {
      const rows = JSON.stringify(entries.flatMap((e) => e.slug === null ? [] : [{ line: e.line, slug: e.slug }]))
      const existing = await c.query<{ line: number, slug: string }>(
        `SELECT x.line, x.slug FROM jsonb_to_recordset($1::jsonb) AS x(line int, slug text) JOIN ${this.#s}.tenants t ON t.slug = x.slug`, [rows])
      for (const r of existing.rows) problems.push({ line: r.line, message: `tenant ${r.slug} already exists (use --replace to update it)` })
    }
    const domains = JSON.stringify(entries.flatMap((e) => e.domains.map((hostname) => ({ line: e.line, hostname, slug: e.slug }))))
    const taken = await c.query<{ line: number, hostname: string, owner: string }>(
      `SELECT x.line, x.hostname, t.slug AS owner FROM jsonb_to_recordset($1::jsonb) AS x(line int, hostname text, slug text)
       JOIN ${this.#s}.domains d ON d.hostname = x.hostname JOIN ${this.#s}.tenants t ON t.id = d.tenant_id
       WHERE t.slug IS DISTINCT FROM x.slug AND NOT t.slug = ANY($2::text[])`, [domains, ours])
    for (const r of taken.rows) problems.push({ line: r.line, message: `domain ${r.hostname} already belongs to tenant ${r.owner}` })
    const databases = JSON.stringify(entries.flatMap((e) => e.database === null ? [] : [{ line: e.line, slug: e.slug, ...e.database }]))
    // The same expressions as the unique index tenants_database_location_key, so it is used.
    const used = await c.query<{ line: number, name: string, host: string | null, port: number | null, owner: string }>(
      `SELECT x.line, x.name, x.host, x.port, t.slug AS owner FROM jsonb_to_recordset($1::jsonb) AS x(line int, slug text, name text, host text, port int)
       JOIN ${this.#s}.tenants t ON coalesce(t.database_host, '') = coalesce(x.host, '') AND coalesce(t.database_port, 0) = coalesce(x.port, 0) AND t.database_name = x.name
       WHERE t.slug IS DISTINCT FROM x.slug AND NOT t.slug = ANY($2::text[])`, [databases, ours])
    for (const r of used.rows) problems.push({ line: r.line, message: `${databaseLabel(r)} is already used by tenant ${r.owner}` })
    return problems
  }

  async #importWrite (c: pg.PoolClient, tenants: readonly TransferTenant[], replace: boolean): Promise<{ created: number, updated: number }> {
    const rows = JSON.stringify(tenants.map(({ domains: _domains, ...t }) => t))
    const domains = JSON.stringify(tenants.flatMap((t) => t.domains.map((d) => ({ hostname: d.hostname, kind: d.kind, slug: t.slug }))))
    const slugs = tenants.map((t) => t.slug)
    const columns = 'slug text, state text, database_name text, database_host text, database_port int, upstream text, settings jsonb'
    // Existing tenants first, so a database one of them gives up is free for a new one (the
    // unique index is checked row by row). Without --replace there are none (they were refused),
    // and the plain INSERT makes a tenant created by another writer since the check a unique
    // violation, reported as a conflict, never silently overwritten.
    const updated = replace
      ? (await c.query(
          `UPDATE ${this.#s}.tenants t SET state = x.state, database_name = x.database_name, database_host = x.database_host,
             database_port = x.database_port, upstream = x.upstream, settings = coalesce(x.settings, '{}'::jsonb)
           FROM jsonb_to_recordset($1::jsonb) AS x(${columns}) WHERE t.slug = x.slug`, [rows])).rowCount ?? 0
      : 0
    const inserted = await c.query(
      `INSERT INTO ${this.#s}.tenants (slug, state, database_name, database_host, database_port, upstream, settings)
       SELECT slug, state, database_name, database_host, database_port, upstream, coalesce(settings, '{}'::jsonb) FROM jsonb_to_recordset($1::jsonb) AS x(${columns})
       WHERE NOT EXISTS (SELECT 1 FROM ${this.#s}.tenants t WHERE t.slug = x.slug)`, [rows])
    // The listed tenants' domain sets are replaced; a domain moving between two of them moves here.
    // Domains of tenants outside the import were refused above and are never deleted: one added
    // since the check makes the INSERT below fail (reported as a conflict) rather than move.
    await c.query(`DELETE FROM ${this.#s}.domains WHERE tenant_id IN (SELECT id FROM ${this.#s}.tenants WHERE slug = ANY($1::text[]))`, [slugs])
    await c.query(
      `INSERT INTO ${this.#s}.domains (hostname, tenant_id, kind)
       SELECT x.hostname, t.id, x.kind FROM jsonb_to_recordset($1::jsonb) AS x(hostname text, kind text, slug text) JOIN ${this.#s}.tenants t ON t.slug = x.slug`, [domains])
    return { created: inserted.rowCount ?? 0, updated }
  }

  /**
   * A unique violation of the import that a fresh check does not explain (the other writer has
   * rolled back, or two tenants of one --replace import swap databases, which the per-row unique
   * index refuses), named by its line as far as the constraint's detail tells.
   */
  async #importViolation (err: unknown, entries: readonly ImportEntry[]): Promise<ImportProblem> {
    const e = err as { constraint?: string, detail?: string }
    const values = keyValues(e.detail)
    if (e.constraint === 'tenants_database_location_key' && values !== null) {
      const [host = '', port = '0', name = ''] = values
      const db = { name, host: host === '' ? null : host, port: port === '0' ? null : Number(port) }
      const line = entries.find((x) => x.database !== null && x.database.name === db.name && x.database.host === db.host && x.database.port === db.port)?.line ?? null
      const owner = await this.#pool.query<{ slug: string }>(
        `SELECT slug FROM ${this.#s}.tenants WHERE coalesce(database_host, '') = $1 AND coalesce(database_port, 0) = $2 AND database_name = $3`, [host, Number(port), name])
      const who = owner.rows[0]?.slug
      return { line, message: `${databaseLabel(db)} was still used by ${who === undefined ? 'another tenant' : `tenant ${who}`} when this line was written (to move a database between two tenants, import the tenant giving it up first)` }
    }
    const value = values?.[0]
    const line = value === undefined ? null : entries.find((x) => x.slug === value || x.domains.includes(value))?.line ?? null
    return { line, message: `refused by the registry (${e.constraint ?? 'unique constraint'}: ${e.detail ?? 'duplicate value'}); run the import again` }
  }

  /** Registry version and row counts. */
  async status (): Promise<{ version: number, tenants: number, domains: number }> {
    const r = await this.#pool.query<{ version: string, tenants: number, domains: number }>(
      `SELECT (SELECT version FROM ${this.#s}.registry_state) AS version,
              (SELECT count(*)::int FROM ${this.#s}.tenants) AS tenants,
              (SELECT count(*)::int FROM ${this.#s}.domains) AS domains`)
    const row = r.rows[0]
    return { version: Number(row?.version ?? 0), tenants: row?.tenants ?? 0, domains: row?.domains ?? 0 }
  }

  /**
   * What would refuse a new tenant now (its slug, a domain, its database on that host and port),
   * as the catalogue errors addTenant would raise, so provisioning can stop before it creates a
   * database. Only a pre-check: the insert's constraints still decide.
   */
  async newTenantConflicts (input: { slug: string, domains: readonly string[], databaseName: string, host: string | null, port: number | null }): Promise<Error[]> {
    const found: Error[] = []
    const slug = await this.#pool.query(`SELECT 1 FROM ${this.#s}.tenants WHERE slug = $1`, [input.slug])
    if (slug.rowCount !== 0) found.push(tpError('TENANT_PROXY_ERR_TENANT_EXISTS', [input.slug]))
    const domains = await this.#pool.query<{ hostname: string, slug: string }>(
      `SELECT d.hostname, t.slug FROM ${this.#s}.domains d JOIN ${this.#s}.tenants t ON t.id = d.tenant_id WHERE d.hostname = ANY($1::text[]) ORDER BY d.hostname`, [input.domains])
    for (const r of domains.rows) found.push(tpError('TENANT_PROXY_ERR_DOMAIN_TAKEN', [r.hostname, r.slug]))
    const db = await this.#pool.query<{ slug: string }>(
      `SELECT slug FROM ${this.#s}.tenants WHERE coalesce(database_host, '') = coalesce($1, '') AND coalesce(database_port, 0) = coalesce($2, 0) AND database_name = $3`,
      [input.host, input.port, input.databaseName])
    const owner = db.rows[0]?.slug
    if (owner !== undefined) found.push(tpError('TENANT_PROXY_ERR_TENANT_DATABASE_TAKEN', [databaseLabel({ name: input.databaseName, host: input.host, port: input.port }).replace(/^database /, ''), owner]))
    return found
  }

  /**
   * Writes adopted tenants in one transaction (registry adopt). The tenant tables are locked
   * against other writers for its duration (SHARE ROW EXCLUSIVE: the proxies' reads go on), so
   * what is checked here is what is written. A candidate whose tenant exists already with the same
   * database and domain is unchanged, or, when its state or settings differ, updated with `update`
   * (else reported as differing); one whose slug, domain or database belongs to another tenant is
   * refused. `dryRun` rolls back.
   */
  async adoptTenants (candidates: readonly AdoptCandidate[], location: { server: string | null, host: string | null, port: number | null }, opts: { update: boolean, dryRun: boolean }): Promise<Written<AdoptOutcome[]>> {
    return await this.#transaction('BEGIN', opts.dryRun ? 'ROLLBACK' : 'COMMIT', async (c) => {
      await c.query(`LOCK TABLE ${this.#s}.tenants, ${this.#s}.domains IN SHARE ROW EXCLUSIVE MODE`)
      const outcomes: AdoptOutcome[] = []
      const slugs = candidates.map((x) => x.slug)
      const existing = new Map((await c.query<TenantRecord>(`${this.#selectTenants()} WHERE t.slug = ANY($1::text[])`, [slugs])).rows.map((t) => [t.slug, normalize(t)]))
      const hostnames = candidates.flatMap((x) => x.domains)
      const owners = new Map((await c.query<{ hostname: string, slug: string }>(
        `SELECT d.hostname, t.slug FROM ${this.#s}.domains d JOIN ${this.#s}.tenants t ON t.id = d.tenant_id WHERE d.hostname = ANY($1::text[])`, [hostnames])).rows.map((r) => [r.hostname, r.slug]))
      const users = new Map((await c.query<{ database_name: string, slug: string }>(
        `SELECT database_name, slug FROM ${this.#s}.tenants WHERE coalesce(database_host, '') = coalesce($1, '') AND coalesce(database_port, 0) = coalesce($2::int, 0) AND database_name = ANY($3::text[])`,
        [location.host, location.port, candidates.map((x) => x.databaseName)])).rows.map((r) => [r.database_name, r.slug]))
      const sameLocation = (t: TenantRecord): boolean => t.database_host === location.host && t.database_port === location.port
      for (const x of candidates) {
        const out = (action: AdoptOutcome['action'], reason: string | null = null): void => { outcomes.push({ key: x.key, slug: x.slug, action, reason }) }
        const t = existing.get(x.slug)
        if (t !== undefined) {
          const hosts = t.domains.map((d) => d.hostname)
          if (t.database_name !== x.databaseName || !sameLocation(t) || !x.domains.every((h) => hosts.includes(h))) {
            out('refused', `slug ${x.slug} is tenant ${x.slug} with database ${t.database_name} and domain(s) ${hosts.join(', ')}; give slugs with --slug-column`)
            continue
          }
          const changes: string[] = []
          if (t.state !== x.state) changes.push(`state ${t.state} → ${x.state}`)
          if (stableJson(t.settings) !== stableJson(x.settings)) changes.push('settings')
          if (changes.length === 0) { out('unchanged'); continue }
          if (!opts.update) { out('differs', `${changes.join(', ')} (--update applies it)`); continue }
          await c.query(`UPDATE ${this.#s}.tenants SET state = $2, settings = $3 WHERE slug = $1`, [x.slug, x.state, JSON.stringify(x.settings)])
          out('updated', changes.join(', '))
          continue
        }
        const taken = x.domains.map((h) => [h, owners.get(h)] as const).find(([, owner]) => owner !== undefined)
        if (taken !== undefined) { out('refused', `domain ${taken[0]} already belongs to tenant ${taken[1] ?? ''}`); continue }
        const user = users.get(x.databaseName)
        if (user !== undefined) { out('refused', `database ${x.databaseName} is already used by tenant ${user}`); continue }
        const r = await c.query<{ id: string }>(
          `INSERT INTO ${this.#s}.tenants (slug, database_name, database_host, database_port, database_server, state, settings)
           VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id`,
          [x.slug, x.databaseName, location.server === null ? location.host : null, location.server === null ? location.port : null, location.server, x.state, JSON.stringify(x.settings)])
        for (const [i, hostname] of x.domains.entries()) {
          await c.query(`INSERT INTO ${this.#s}.domains (hostname, tenant_id, kind) VALUES ($1, $2, $3)`, [hostname, r.rows[0]?.id, i === 0 ? 'primary' : 'alias'])
          owners.set(hostname, x.slug)
        }
        users.set(x.databaseName, x.slug)
        out('created')
      }
      return { result: outcomes, version: await this.#versionIn(c) }
    }, { slug: null, databaseName: null, domains: [] })
  }

  /** Every database server with the number of tenants naming it, by name. */
  async listServers (): Promise<ServerRecord[]> {
    const r = await this.#pool.query<ServerRecord>(`${this.#selectServers()} ORDER BY s.name`)
    return r.rows
  }

  /** The server of this name, or null. */
  async findServer (name: string): Promise<ServerRecord | null> {
    const r = await this.#pool.query<ServerRecord>(`${this.#selectServers()} WHERE s.name = $1`, [name])
    return r.rows[0] ?? null
  }

  /** Registers a database server. */
  async addServer (input: NewServer): Promise<Written<ServerRecord>> {
    return await this.#write(async (c) => {
      await c.query(
        `INSERT INTO ${this.#s}.database_servers (name, host, port, admin_url_env, admin_url_file, owner) VALUES ($1, $2, $3, $4, $5, $6)`,
        [input.name, input.host, input.port, input.adminUrlEnv, input.adminUrlFile, input.owner])
      return await this.#mustFindServer(c, input.name)
    }, { slug: null, databaseName: null, domains: [], server: input.name })
  }

  /**
   * Changes a server. A new host or port is copied into every tenant on it in this transaction
   * (migration 003's trigger): one registry version, every tenant logged as changed, epochs bumped.
   */
  async updateServer (name: string, patch: ServerPatch): Promise<Written<{ server: ServerRecord, tenantsMoved: number }>> {
    const sets: string[] = []
    const values: unknown[] = []
    const set = (column: string, value: unknown): void => {
      values.push(value)
      sets.push(`${column} = $${values.length}`)
    }
    if (patch.host !== undefined) set('host', patch.host)
    if (patch.port !== undefined) set('port', patch.port)
    if (patch.adminUrlEnv !== undefined) set('admin_url_env', patch.adminUrlEnv)
    if (patch.adminUrlFile !== undefined) set('admin_url_file', patch.adminUrlFile)
    if (patch.owner !== undefined) set('owner', patch.owner)
    if (sets.length === 0) throw tpError('TENANT_PROXY_ERR_CLI_USAGE', ['nothing to update: give at least one option such as --host or --port'])
    return await this.#write(async (c) => {
      const before = await c.query<{ host: string, port: number }>(`SELECT host, port FROM ${this.#s}.database_servers WHERE name = $1 FOR UPDATE`, [name])
      const old = before.rows[0]
      if (old === undefined) throw tpError('TENANT_PROXY_ERR_SERVER_NOT_FOUND', [name])
      values.push(name)
      await c.query(`UPDATE ${this.#s}.database_servers SET ${sets.join(', ')} WHERE name = $${values.length}`, values)
      const server = await this.#mustFindServer(c, name)
      const moved = server.host !== old.host || server.port !== old.port ? server.tenants : 0
      return { server, tenantsMoved: moved }
    }, { slug: null, databaseName: null, domains: [], server: name })
  }

  /** Removes a server no tenant names (refused, naming them, otherwise); `dryRun` checks and rolls back. */
  async removeServer (name: string, opts: { dryRun?: boolean } = {}): Promise<Written<ServerRecord>> {
    const subject = { slug: null, databaseName: null, domains: [], server: name }
    return await this.#transaction('BEGIN', opts.dryRun === true ? 'ROLLBACK' : 'COMMIT', async (c) => {
      const server = await this.#mustFindServer(c, name)
      if (server.tenants > 0) throw await this.#serverInUse(name)
      // The foreign key (ON DELETE RESTRICT) still refuses a tenant added since the count.
      await c.query(`DELETE FROM ${this.#s}.database_servers WHERE name = $1`, [name])
      return { result: server, version: await this.#versionIn(c) }
    }, subject)
  }

  #selectServers (): string {
    return `SELECT s.name, s.host, s.port, s.admin_url_env, s.admin_url_file, s.owner,
      (SELECT count(*)::int FROM ${this.#s}.tenants t WHERE t.database_server = s.name) AS tenants,
      to_char(s.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS created_at,
      to_char(s.updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS updated_at
      FROM ${this.#s}.database_servers s`
  }

  async #mustFindServer (c: pg.PoolClient, name: string): Promise<ServerRecord> {
    const r = await c.query<ServerRecord>(`${this.#selectServers()} WHERE s.name = $1`, [name])
    const row = r.rows[0]
    if (row === undefined) throw tpError('TENANT_PROXY_ERR_SERVER_NOT_FOUND', [name])
    return row
  }

  #selectTenants (): string {
    return `SELECT t.slug, t.state, t.database_name, t.database_host, t.database_port, t.database_server, t.upstream, t.epoch, t.paused_hold_ms, t.settings,
      coalesce((SELECT json_agg(json_build_object('hostname', d.hostname, 'kind', d.kind) ORDER BY d.kind DESC, d.hostname)
                FROM ${this.#s}.domains d WHERE d.tenant_id = t.id), '[]'::json) AS domains,
      to_char(t.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS created_at,
      to_char(t.updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS updated_at
      FROM ${this.#s}.tenants t`
  }

  async #mustFind (c: pg.PoolClient, slug: string): Promise<TenantRecord> {
    const r = await c.query<TenantRecord>(`${this.#selectTenants()} WHERE t.slug = $1`, [slug])
    const row = r.rows[0]
    if (row === undefined) throw tpError('TENANT_PROXY_ERR_TENANT_NOT_FOUND', [slug])
    return normalize(row)
  }

  /** Runs a write like #tx and returns its result with the registry version it commits as. */
  async #write<T> (fn: (c: pg.PoolClient) => Promise<T>, subject: Subject): Promise<Written<T>> {
    return await this.#tx(async (c) => {
      const result = await fn(c)
      return { result, version: await this.#versionIn(c) }
    }, subject)
  }

  /**
   * The registry version as this transaction sees it, read after its writes: the record_change
   * trigger (migration 001) bumped registry_state.version once for the transaction and holds that
   * row's lock until COMMIT, so this is exactly the version the transaction commits as. A
   * transaction that changed no row reads the latest committed version, which is as good a target.
   */
  async #versionIn (c: pg.PoolClient): Promise<number> {
    const r = await c.query<{ version: string }>(`SELECT version FROM ${this.#s}.registry_state`)
    return Number(r.rows[0]?.version ?? 0)
  }

  /** Runs `fn` in a transaction and turns constraint violations into catalogue errors. */
  async #tx<T> (fn: (c: pg.PoolClient) => Promise<T>, subject: Subject): Promise<T> {
    return await this.#transaction('BEGIN', 'COMMIT', fn, subject)
  }

  /**
   * Runs `fn` between `begin` and `end` on one pooled connection, rolling back on error; with a
   * `subject`, constraint violations become catalogue errors naming it.
   */
  async #transaction<T> (begin: string, end: 'COMMIT' | 'ROLLBACK', fn: (c: pg.PoolClient) => Promise<T>, subject: Subject | null): Promise<T> {
    const c = await this.#pool.connect()
    try {
      await c.query(begin)
      const result = await fn(c)
      await c.query(end)
      return result
    } catch (err) {
      await c.query('ROLLBACK').catch(() => undefined)
      throw subject === null ? err : await this.#explain(err, subject)
    } finally {
      c.release()
    }
  }

  async #explain (err: unknown, subject: Subject): Promise<unknown> {
    const e = err as { code?: string, constraint?: string, detail?: string }
    const values = keyValues(e.detail)
    if (e.code === '23505') {
      if (e.constraint === 'tenants_slug_key') return tpError('TENANT_PROXY_ERR_TENANT_EXISTS', [values?.[0] ?? subject.slug ?? 'of that slug'], err)
      if (e.constraint === 'domains_pkey') {
        const taken = values?.[0] ?? subject.domains.join(', ')
        const owner = await this.#pool.query<{ slug: string }>(
          `SELECT t.slug FROM ${this.#s}.domains d JOIN ${this.#s}.tenants t ON t.id = d.tenant_id WHERE d.hostname = $1`, [taken])
        return tpError('TENANT_PROXY_ERR_DOMAIN_TAKEN', [taken, owner.rows[0]?.slug ?? 'another tenant'], err)
      }
      if (e.constraint === 'tenants_database_location_key') {
        // Detail: Key (COALESCE(database_host, ''::text), COALESCE(database_port, 0), database_name)=(host, port, name) …
        const [host = '', port = '0', name = subject.databaseName ?? ''] = values ?? []
        const owner = await this.#pool.query<{ slug: string }>(
          `SELECT slug FROM ${this.#s}.tenants WHERE coalesce(database_host, '') = $1 AND coalesce(database_port, 0) = $2 AND database_name = $3`, [host, Number(port), name])
        const db = databaseLabel({ name, host: host === '' ? null : host, port: port === '0' ? null : Number(port) }).replace(/^database /, '')
        return tpError('TENANT_PROXY_ERR_TENANT_DATABASE_TAKEN', [db, owner.rows[0]?.slug ?? 'another tenant'], err)
      }
    }
    if (e.code === '23505' && e.constraint === 'database_servers_pkey') return tpError('TENANT_PROXY_ERR_SERVER_EXISTS', [values?.[0] ?? subject.server ?? ''], err)
    if (e.code === '23503' && e.constraint === 'tenants_database_server_fkey') {
      // Inserting or updating a tenant: the server does not exist; deleting a server: tenants use it.
      if (/is still referenced/.test(e.detail ?? '')) return await this.#serverInUse(subject.server ?? '', err)
      return tpError('TENANT_PROXY_ERR_SERVER_NOT_FOUND', [/\(database_server\)=\((.*)\)/.exec(e.detail ?? '')?.[1] ?? subject.server ?? ''], err)
    }
    if (e.code === '23514') return tpError('TENANT_PROXY_ERR_TENANT_INVALID', [`value refused by registry constraint ${e.constraint ?? '(unnamed)'}`], err)
    return err
  }

  async #serverInUse (name: string, cause?: unknown): Promise<Error> {
    const r = await this.#pool.query<{ slug: string, n: number }>(
      `SELECT slug, count(*) OVER ()::int AS n FROM ${this.#s}.tenants WHERE database_server = $1 ORDER BY slug LIMIT 10`, [name])
    const n = r.rows[0]?.n ?? 0
    const slugs = r.rows.map((x) => x.slug).join(', ')
    return tpError('TENANT_PROXY_ERR_SERVER_IN_USE', [name, n, `${slugs}${n > r.rows.length ? ', …' : ''}`], cause)
  }
}

/**
 * Runs `fn` in a transaction on a connection the caller holds (the proxy's feed connection). On
 * an error it rolls back, so the connection is usable again once the error reaches the caller.
 */
async function onClient<T> (client: pg.ClientBase, begin: string, fn: (c: pg.ClientBase) => Promise<T>): Promise<T> {
  await client.query(begin)
  try {
    const result = await fn(client)
    await client.query('COMMIT')
    return result
  } catch (err) {
    await client.query('ROLLBACK').catch(() => undefined)
    throw err
  }
}

/** The values of a unique violation's detail, "Key (…)=(a, b, c) already exists." → [a, b, c]; null when absent. */
function keyValues (detail: string | undefined): string[] | null {
  const m = /\)=\((.*)\) already exists/.exec(detail ?? '')
  return m === null ? null : (m[1] ?? '').split(', ')
}

/** JSON with object keys sorted, for comparing settings by value. */
function stableJson (value: unknown): string {
  return JSON.stringify(value, (_key, v: unknown) => v !== null && typeof v === 'object' && !Array.isArray(v)
    ? Object.fromEntries(Object.entries(v as Record<string, unknown>).sort(([a], [b]) => a < b ? -1 : a > b ? 1 : 0))
    : v)
}

function normalize (row: TenantRecord): TenantRecord {
  return { ...row, epoch: Number(row.epoch), database_port: row.database_port === null ? null : Number(row.database_port) }
}
