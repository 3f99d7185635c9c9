import type { Migration } from './index.js'

/**
 * What the live change feed needs besides the change log:
 * - registry_id: names this registry, so a proxy refuses a last-known-good snapshot file written
 *   from another registry (a copied volume, a staging file in production);
 * - pruned_through: the highest version whose change rows may have been deleted, so a proxy that
 *   is further behind resyncs from a full snapshot instead of applying a log with holes;
 * - changes_tenant_id_idx is not needed (the feed reads changes by version), but the feed reads
 *   current rows by tenant id and hostname, both already indexed.
 */
export const live: Migration = {
  version: 2,
  name: 'live feed',
  sql: (s) => `
ALTER TABLE ${s}.registry_state
  ADD COLUMN registry_id uuid NOT NULL DEFAULT gen_random_uuid(),
  ADD COLUMN pruned_through bigint NOT NULL DEFAULT 0;
`
}
