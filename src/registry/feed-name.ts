/**
 * The `application_name` of a proxy's change-feed connection, which is how a proxy tells the
 * registry which version it has applied (`tenant-proxy … --wait`, `registry status`):
 *
 *   <registry.applicationName> feed v=<version> <host>/<pid>     (index at <version> applied)
 *   <registry.applicationName> feed <host>/<pid>                 (connected, first load not done)
 *
 * application_name is the one thing a session can publish that every other role can read
 * (pg_stat_activity shows it to all roles) and that needs no write privilege (any role may set
 * its own), so it works with the read-only proxy role docs/operations.md recommends. PostgreSQL
 * keeps at most NAMEDATALEN - 1 = 63 bytes of it and replaces non-printable-ASCII bytes with '?'
 * (https://www.postgresql.org/docs/current/runtime-config-logging.html#GUC-APPLICATION-NAME), so
 * the name is built within 63 printable ASCII bytes by shortening the host, never the version.
 */

/** PostgreSQL's limit on application_name (NAMEDATALEN - 1). */
export const APPLICATION_NAME_MAX_BYTES = 63

/** A feed connection as seen in pg_stat_activity. */
export interface FeedName {
  /** `<host>/<pid>` of the proxy process (the host possibly shortened). */
  readonly proxy: string
  /** The registry version the proxy's index is at; null while it has not reported one. */
  readonly version: number | null
}

/** What every feed connection's application_name starts with, for this applicationName. */
export function feedPrefix (applicationName: string): string {
  return `${applicationName} feed `
}

/** The feed's application_name; `version` null before the first load on this connection. */
export function feedApplicationName (applicationName: string, version: number | null, host: string, pid: number): string {
  const head = `${feedPrefix(applicationName)}${version === null ? '' : `v=${version} `}`
  const tail = `/${pid}`
  // Only printable ASCII survives unchanged; anything else would turn into '?' anyway.
  const safeHost = host.replace(/[^\x21-\x7e]/g, '?')
  const room = Math.max(0, APPLICATION_NAME_MAX_BYTES - head.length - tail.length)
  return `${head}${safeHost.slice(0, room)}${tail}`.slice(0, APPLICATION_NAME_MAX_BYTES)
}

/** Parses a feed's application_name; null when it is not a feed of this applicationName. */
export function parseFeedApplicationName (applicationName: string, name: string): FeedName | null {
  const prefix = feedPrefix(applicationName)
  if (!name.startsWith(prefix)) return null
  const rest = name.slice(prefix.length)
  const match = /^v=(\d{1,19}) (.*)$/s.exec(rest)
  if (match === null) return { proxy: rest, version: null }
  return { proxy: match[2] ?? '', version: Number(match[1]) }
}
