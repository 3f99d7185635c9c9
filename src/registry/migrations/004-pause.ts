import type { Migration } from './index.js'

/**
 * Paused tenants (`tenants pause`, `tenants move`): a tenant with a hold time holds its new
 * requests in every proxy until the column is cleared, answering 503 + Retry-After only to a
 * request held longer than this many milliseconds. A column of the tenant row, not a state: a
 * pause is orthogonal to active/suspended/maintenance, and as a tenant column it reaches every
 * proxy through the existing change log and NOTIFY (one registry version per write), so a pause
 * and the move that clears it are each applied whole. No epoch bump: the database did not change.
 */
export const pause: Migration = {
  version: 4,
  name: 'paused tenants',
  sql: (s) => `
ALTER TABLE ${s}.tenants ADD COLUMN paused_hold_ms integer NULL
  CONSTRAINT tenants_paused_hold_ms_range CHECK (paused_hold_ms IS NULL OR paused_hold_ms BETWEEN 1 AND 3600000);
`
}
