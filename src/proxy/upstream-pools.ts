/**
 * Upstream origins by pool name, picked round-robin per request. undici's Agent keeps a
 * connection pool per origin, so rotating origins here balances connections too.
 */

/** The default pool plus named ones. */
export class UpstreamPools {
  readonly #default: readonly string[]
  readonly #named: ReadonlyMap<string, readonly string[]>
  readonly #cursor = new Map<string | null, number>()

  constructor (upstream: { urls: readonly string[], pools: Readonly<Record<string, readonly string[]>> }) {
    this.#default = upstream.urls
    this.#named = new Map(Object.entries(upstream.pools))
  }

  /** Next origin of the pool (null = default); undefined when the pool name is not configured. */
  next (pool: string | null): string | undefined {
    const origins = pool === null ? this.#default : this.#named.get(pool)
    if (origins === undefined) return undefined
    if (origins.length === 1) return origins[0]
    const i = ((this.#cursor.get(pool) ?? -1) + 1) % origins.length
    this.#cursor.set(pool, i)
    return origins[i]
  }

  /** Every distinct origin, for readiness checks. */
  all (): string[] {
    return [...new Set([...this.#default, ...[...this.#named.values()].flat()])]
  }
}
