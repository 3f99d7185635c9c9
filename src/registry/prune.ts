/**
 * Pruning of the registry change log, by one process at a time: a proxy on its schedule
 * (src/registry/pruner.ts) or `tenant-proxy registry prune` from cron.
 *
 * One transaction under pg_try_advisory_xact_lock: a second pruner finds the lock taken and skips
 * instead of queueing behind the first (two proxies deleting the same rows would only wait on
 * each other's row locks). Transaction-scoped, so the lock cannot outlive a process that dies, and
 * it works through a pooler in transaction mode (a session lock would not).
 *
 * Deleting needs DELETE on `changes` and UPDATE on `registry_state`, which the read-only proxy
 * role of docs/operations.md does not have: that is checked first with has_table_privilege, so a
 * proxy without the right learns it without an error in the PostgreSQL log (a 42501 raised anyway,
 * by a grant revoked in between, is reported the same way).
 */
import { createHash } from 'node:crypto'
import type pg from 'pg'
import { quoteIdent } from './sql.js'

/** What one prune did. */
export type PruneResult =
  /** Rows deleted (or, in a dry run, that would be): the change rows of versions up to `through`. */
  | { readonly outcome: 'pruned', readonly deleted: number, readonly through: number, readonly dryRun: boolean }
  /** Nothing older than the retention (the newest version's rows are always kept). */
  | { readonly outcome: 'nothing', readonly deleted: 0, readonly dryRun: boolean }
  /** Another process holds the prune lock: it is pruning now. */
  | { readonly outcome: 'busy', readonly dryRun: boolean }
  /** The role may not delete change rows (SQLSTATE 42501 or no DELETE/UPDATE privilege). */
  | { readonly outcome: 'denied', readonly reason: string, readonly dryRun: boolean }

/** SQLSTATE insufficient_privilege. */
const PERMISSION_DENIED = '42501'

/**
 * Deletes change rows older than `retentionS` seconds on `client` (a connection of its own: the
 * prune is one transaction on it), keeping the newest version's rows so the log never runs empty,
 * and raises registry_state.pruned_through first in the same transaction, so no reader sees the
 * hole without the mark (a proxy further behind loads a full snapshot instead).
 * `dryRun` counts what would go and changes nothing.
 */
export async function pruneChangeLog (client: pg.ClientBase, schema: string, retentionS: number, opts: { dryRun?: boolean } = {}): Promise<PruneResult> {
  const dryRun = opts.dryRun === true
  const s = quoteIdent(schema)
  await client.query('BEGIN')
  try {
    const allowed = await client.query<{ ok: boolean }>(
      "SELECT has_table_privilege($1, 'DELETE') AND has_table_privilege($2, 'UPDATE') AS ok",
      [`${s}.changes`, `${s}.registry_state`])
    if (allowed.rows[0]?.ok !== true) {
      await client.query('ROLLBACK')
      return { outcome: 'denied', reason: `role ${await currentUser(client)} lacks DELETE on ${schema}.changes or UPDATE on ${schema}.registry_state`, dryRun }
    }
    if (!dryRun) {
      const locked = await client.query<{ ok: boolean }>('SELECT pg_try_advisory_xact_lock($1::bigint) AS ok', [pruneLockKey(schema)])
      if (locked.rows[0]?.ok !== true) {
        await client.query('ROLLBACK')
        return { outcome: 'busy', dryRun }
      }
    }
    const r = await client.query<{ through: string | null, n: string }>(
      `WITH old AS (
         SELECT max(version) AS through FROM ${s}.changes
         WHERE changed_at < now() - make_interval(secs => $1) AND version < (SELECT max(version) FROM ${s}.changes))
       SELECT old.through, (SELECT count(*) FROM ${s}.changes WHERE version <= old.through) AS n FROM old`, [retentionS])
    const through = r.rows[0]?.through ?? null
    if (through === null) {
      await client.query('ROLLBACK')
      return { outcome: 'nothing', deleted: 0, dryRun }
    }
    if (dryRun) {
      await client.query('ROLLBACK')
      return { outcome: 'pruned', deleted: Number(r.rows[0]?.n ?? 0), through: Number(through), dryRun }
    }
    await client.query(`UPDATE ${s}.registry_state SET pruned_through = greatest(pruned_through, $1)`, [through])
    const d = await client.query(`DELETE FROM ${s}.changes WHERE version <= $1`, [through])
    await client.query('COMMIT')
    return { outcome: 'pruned', deleted: d.rowCount ?? 0, through: Number(through), dryRun }
  } catch (err) {
    await client.query('ROLLBACK').catch(() => undefined)
    if ((err as { code?: string }).code === PERMISSION_DENIED) return { outcome: 'denied', reason: (err as Error).message, dryRun }
    throw err
  }
}

/** pruneChangeLog on a connection of `pool`'s, released after. */
export async function pruneWithPool (pool: pg.Pool, schema: string, retentionS: number, opts: { dryRun?: boolean } = {}): Promise<PruneResult> {
  const client = await pool.connect()
  try {
    return await pruneChangeLog(client, schema, retentionS, opts)
  } finally {
    client.release()
  }
}

async function currentUser (client: pg.ClientBase): Promise<string> {
  const r = await client.query<{ u: string }>('SELECT current_user AS u')
  return r.rows[0]?.u ?? 'unknown'
}

/** A stable 63-bit lock id per schema (distinct from the migration lock's, src/registry/migrate.ts). */
export function pruneLockKey (schema: string): string {
  const digest = createHash('sha256').update(`tenant-proxy:prune:${schema}`).digest()
  return (digest.readBigInt64BE(0) & 0x7fffffffffffffffn).toString()
}
