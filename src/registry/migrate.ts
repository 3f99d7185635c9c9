/**
 * Applies the registry migrations inside one transaction under an advisory lock, so several
 * proxies or CLI runs starting together apply each migration exactly once.
 */
import { createHash } from 'node:crypto'
import type pg from 'pg'
import { tpError } from '../errors.js'
import { LATEST_VERSION, MIGRATIONS } from './migrations/index.js'
import { quoteIdent } from './sql.js'

/** What runs the schema's reads: a pool, or one connection. */
type Queryable = Pick<pg.ClientBase, 'query'>

/** What `migrate` did. */
export interface MigrateResult {
  readonly from: number
  readonly to: number
  readonly applied: ReadonlyArray<{ version: number, name: string }>
}

/**
 * Brings the registry schema up to date; a no-op when it already is. `check` runs the reads that
 * tell (a proxy passes its feed connection, so a reconnect costs the registry no second connection);
 * the pool is used only when there is something to migrate.
 */
export async function migrate (pool: pg.Pool, schema: string, check: Queryable = pool): Promise<MigrateResult> {
  const s = quoteIdent(schema)
  // An up-to-date schema needs no lock and no DDL: checked with reads only, so a proxy running
  // with the read-only registry role (docs/operations.md) starts (CREATE SCHEMA IF NOT EXISTS
  // alone already needs the CREATE privilege on the database, even when the schema exists).
  if (await isUpToDate(check, schema)) return { from: LATEST_VERSION, to: LATEST_VERSION, applied: [] }
  const client = await pool.connect()
  try {
    await client.query('BEGIN')
    // Transaction-scoped: released by COMMIT or ROLLBACK even if this process dies mid-way.
    await client.query('SELECT pg_advisory_xact_lock($1::bigint)', [lockKey(schema)])
    await client.query(`CREATE SCHEMA IF NOT EXISTS ${s}`)
    await client.query(`CREATE TABLE IF NOT EXISTS ${s}.schema_migrations (
      version integer PRIMARY KEY,
      name text NOT NULL,
      applied_at timestamptz NOT NULL DEFAULT now()
    )`)
    const from = await currentVersion(client, schema)
    if (from > LATEST_VERSION) throw tpError('TENANT_PROXY_ERR_REGISTRY_SCHEMA_NEWER', [from, LATEST_VERSION])
    const applied: Array<{ version: number, name: string }> = []
    for (const m of MIGRATIONS) {
      if (m.version <= from) continue
      await client.query(m.sql(s, schema))
      await client.query(`INSERT INTO ${s}.schema_migrations (version, name) VALUES ($1, $2)`, [m.version, m.name])
      applied.push({ version: m.version, name: m.name })
    }
    await client.query('COMMIT')
    return { from, to: Math.max(from, LATEST_VERSION), applied }
  } catch (err) {
    await client.query('ROLLBACK').catch(() => undefined)
    throw err
  } finally {
    client.release()
  }
}

/** Throws TENANT_PROXY_ERR_REGISTRY_NOT_MIGRATED unless the schema is at this build's version. */
export async function assertMigrated (pool: pg.Pool, schema: string): Promise<void> {
  const exists = await pool.query<{ ok: boolean }>(
    "SELECT to_regclass($1) IS NOT NULL AS ok", [`${quoteIdent(schema)}.schema_migrations`])
  if (exists.rows[0]?.ok !== true) throw tpError('TENANT_PROXY_ERR_REGISTRY_NOT_MIGRATED', [schema])
  const version = await currentVersion(pool, schema)
  if (version < LATEST_VERSION) throw tpError('TENANT_PROXY_ERR_REGISTRY_NOT_MIGRATED', [schema])
  if (version > LATEST_VERSION) throw tpError('TENANT_PROXY_ERR_REGISTRY_SCHEMA_NEWER', [version, LATEST_VERSION])
}

async function isUpToDate (db: Queryable, schema: string): Promise<boolean> {
  const exists = await db.query<{ ok: boolean }>('SELECT to_regclass($1) IS NOT NULL AS ok', [`${quoteIdent(schema)}.schema_migrations`])
  return exists.rows[0]?.ok === true && await currentVersion(db, schema) === LATEST_VERSION
}

async function currentVersion (db: Queryable, schema: string): Promise<number> {
  const r = await db.query<{ v: number | null }>(`SELECT max(version) AS v FROM ${quoteIdent(schema)}.schema_migrations`)
  return r.rows[0]?.v ?? 0
}

/** A stable 63-bit lock id per schema, so registries in different schemas do not block each other. */
function lockKey (schema: string): string {
  const digest = createHash('sha256').update(`tenant-proxy:migrate:${schema}`).digest()
  return (digest.readBigInt64BE(0) & 0x7fffffffffffffffn).toString()
}
