/**
 * How registry conflicts are named: a tenant database by its location, and problems by input
 * line. Shared by the import (src/registry/transfer.ts, the CLI) and the store's error mapping,
 * which the proxy loads too, so it is kept apart from the import format.
 */

/** A problem with the input, on a line (null: the input as a whole). */
export interface ImportProblem { readonly line: number | null, readonly message: string }

/** Where a tenant database lives, as the registry keys it (null host/port: the default server). */
export interface DatabaseLocation { readonly name: string, readonly host: string | null, readonly port: number | null }

/** Problems as the CLI prints them: by line, "line N: …". */
export function formatProblems (problems: readonly ImportProblem[]): string {
  return [...problems]
    .sort((a, b) => (a.line ?? 0) - (b.line ?? 0))
    .map((p) => p.line === null ? p.message : `line ${p.line}: ${p.message}`)
    .join('\n')
}

/** "database acme", or "database acme on db2.internal:6432" when it is not on the default server. */
export function databaseLabel (db: DatabaseLocation): string {
  if (db.host === null && db.port === null) return `database ${db.name}`
  return `database ${db.name} on ${db.host ?? 'the default host'}:${db.port ?? 'the default port'}`
}
