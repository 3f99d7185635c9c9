/**
 * A change announcement: the payload of a notification on the schema's channel. Since migration
 * 005 a registry transaction announces its version with the change itself when it is small (see
 * src/registry/migrations/005-announce.ts):
 *
 *   [1, version, registry_id, changes, slugs | null, hostnames | null, tenant rows | null, domain rows | null]
 *
 * the same rows a delta from version - 1 reads (src/registry/store.ts, completeDelta), so a proxy
 * at version - 1 applies it without a query. Otherwise the payload is the version alone, in
 * decimal (migrations 001–004 always sent that). Anything else announces "something changed"
 * (version NaN): the proxy reads the change log, as it would after a lost notification.
 */
import { completeDelta, type CompleteDelta, type DeltaRows, type TenantTuple } from './store.js'

/** What a notification said: the committed version, and the change when it came along. */
export interface Announcement {
  readonly version: number
  readonly delta: CompleteDelta | null
}

const FORMAT = 1

export function parseAnnouncement (payload: string | undefined): Announcement {
  if (payload === undefined || !payload.startsWith('[')) return { version: Number(payload), delta: null }
  let value: unknown
  try {
    value = JSON.parse(payload)
  } catch {
    return { version: NaN, delta: null }
  }
  if (!Array.isArray(value) || value.length !== 8 || value[0] !== FORMAT) return { version: NaN, delta: null }
  const [, version, registryId, changes, slugs, hosts, tenants, domains] = value as unknown[]
  if (!isCount(version) || version < 1 || typeof registryId !== 'string' || !isCount(changes)) return { version: NaN, delta: null }
  const rows = [slugs, hosts, tenants, domains]
  if (!isRows(rows)) return { version, delta: null }
  return { version, delta: completeDelta(version - 1, version, registryId, changes, rows) }
}

function isCount (x: unknown): x is number {
  return typeof x === 'number' && Number.isSafeInteger(x) && x >= 0
}

function isStrings (x: unknown): x is string[] | null {
  return x === null || (Array.isArray(x) && x.every((s) => typeof s === 'string'))
}

const nullOr = (test: (x: unknown) => boolean) => (x: unknown): boolean => x === null || test(x)
const isString = (x: unknown): boolean => typeof x === 'string'
const isInt = (x: unknown): boolean => isCount(x)
/** id, slug, database_name, database_host, database_port, state, upstream, epoch, primary hostname, paused_hold_ms. */
const TENANT_COLUMNS = [isInt, isString, isString, nullOr(isString), nullOr(isInt), isString, nullOr(isString), isInt, nullOr(isString), nullOr(isInt)]

function isTenant (x: unknown): x is TenantTuple {
  return Array.isArray(x) && x.length === TENANT_COLUMNS.length && TENANT_COLUMNS.every((test, i) => test(x[i]))
}

function isRows (rows: unknown[]): rows is DeltaRows {
  const [slugs, hosts, tenants, domains] = rows
  return rows.length === 4 && isStrings(slugs) && isStrings(hosts) &&
    (tenants === null || (Array.isArray(tenants) && tenants.every(isTenant))) &&
    (domains === null || (Array.isArray(domains) && domains.every((d) => Array.isArray(d) && d.length === 2 && typeof d[0] === 'string' && typeof d[1] === 'string')))
}
