/** SQL text helpers shared by the registry modules. */

/** Quotes an SQL identifier (the schema name is validated, but quoting keeps it safe regardless). */
export function quoteIdent (name: string): string {
  return `"${name.replace(/"/g, '""')}"`
}
