/**
 * Validation of registry values in code, mirroring the CHECK constraints of the initial migration:
 * the CLI refuses bad input with a precise message before any SQL runs, and the database refuses
 * it again for any other writer.
 */
import { tpError } from '../errors.js'

export const TENANT_STATES = ['active', 'suspended', 'maintenance'] as const
export type TenantState = typeof TENANT_STATES[number]

const SLUG = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/
const DATABASE_NAME = /^[a-z_][a-z0-9_]{0,62}$/
const DATABASE_HOST = /^[a-z0-9]([a-z0-9.:-]{0,251}[a-z0-9])?$/
const UPSTREAM = /^[a-z0-9][a-z0-9_-]{0,62}$/
const SERVER_NAME = /^[a-z0-9]([a-z0-9_-]{0,61}[a-z0-9])?$/
const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]{0,127}$/
const ROLE_NAME = /^[a-z_][a-z0-9_]{0,62}$/

/** True for a well-formed tenant slug (see checkSlug). */
export function isSlug (value: string): boolean {
  return SLUG.test(value)
}

/** A tenant slug: 1-63 lower-case letters, digits and inner hyphens (usable as a DNS label). */
export function checkSlug (value: string): string {
  if (!SLUG.test(value)) invalid(`invalid tenant slug ${JSON.stringify(value)}: use 1-63 lower-case letters, digits and hyphens, not starting or ending with a hyphen`)
  return value
}

/** A PostgreSQL database name we can use without quoting. */
export function checkDatabaseName (value: string): string {
  if (!DATABASE_NAME.test(value)) invalid(`invalid database name ${JSON.stringify(value)}: use 1-63 lower-case letters, digits and underscores, not starting with a digit`)
  return value
}

/** A database server host name or address, lower-case. */
export function checkDatabaseHost (value: string): string {
  if (!DATABASE_HOST.test(value)) invalid(`invalid database host ${JSON.stringify(value)}: use a lower-case host name or IP address`)
  return value
}

/** A TCP port given as text on the command line. */
export function checkPort (value: string | number): number {
  const n = typeof value === 'number' ? value : /^\d{1,5}$/.test(value) ? Number(value) : NaN
  if (!Number.isInteger(n) || n < 1 || n > 65_535) invalid(`invalid database port ${JSON.stringify(value)}: use a number from 1 to 65535`)
  return n
}

/** One of active, suspended, maintenance. */
export function checkState (value: string): TenantState {
  if (!(TENANT_STATES as readonly string[]).includes(value)) invalid(`invalid state ${JSON.stringify(value)}: use one of ${TENANT_STATES.join(', ')}`)
  return value as TenantState
}

/** An upstream pool name as configured in upstream.pools. */
export function checkUpstream (value: string): string {
  if (!UPSTREAM.test(value)) invalid(`invalid upstream pool name ${JSON.stringify(value)}: use 1-63 lower-case letters, digits, '-' and '_'`)
  return value
}

/** A database server's name in the registry (migration 003): like a slug, '_' allowed. */
export function checkServerName (value: string): string {
  if (!SERVER_NAME.test(value)) invalid(`invalid server name ${JSON.stringify(value)}: use 1-63 lower-case letters, digits, '-' and '_', starting and ending with a letter or digit`)
  return value
}

/** The name of an environment variable holding a server's admin URL (never the URL itself). */
export function checkEnvName (value: string): string {
  if (value.includes('://')) invalid('--admin-url-env takes the NAME of an environment variable that holds the URL, not the URL: the registry never stores credentials')
  if (!ENV_NAME.test(value)) invalid(`invalid environment variable name ${JSON.stringify(value)}: use letters, digits and '_', not starting with a digit`)
  return value
}

/** The path of a file holding a server's admin URL (never the URL itself). */
export function checkAdminUrlFile (value: string): string {
  if (value.includes('://')) invalid('--admin-url-file takes the PATH of a file that holds the URL, not the URL: the registry never stores credentials')
  // eslint-disable-next-line no-control-regex
  if (value.length === 0 || value.length > 4096 || /[\x00-\x1f\x7f]/.test(value)) invalid(`invalid file path ${JSON.stringify(value)}`)
  return value
}

/** A PostgreSQL role name used as a database owner (lower-case, usable without quoting). */
export function checkRoleName (value: string): string {
  if (!ROLE_NAME.test(value)) invalid(`invalid role name ${JSON.stringify(value)}: use 1-63 lower-case letters, digits and underscores, not starting with a digit`)
  return value
}

/** Tenant settings: a JSON object given as text. */
export function checkSettings (value: string): Record<string, unknown> {
  let parsed: unknown
  try {
    parsed = JSON.parse(value)
  } catch (err) {
    invalid(`invalid settings: not JSON (${(err as Error).message})`)
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) invalid('invalid settings: must be a JSON object')
  return parsed as Record<string, unknown>
}

function invalid (message: string): never {
  throw tpError('TENANT_PROXY_ERR_TENANT_INVALID', [message])
}
