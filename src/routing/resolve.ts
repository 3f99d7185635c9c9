/**
 * Canonical host → route decision, from the in-memory index only (no I/O on the request path).
 */
import type { Route, RegistryIndex } from '../registry/index.js'

/** The routing options resolution needs, already canonical (validated by the config schema). */
export interface ResolveOptions {
  readonly wwwFallback: boolean
  readonly wildcardDomains: readonly string[]
  readonly reservedLabels: readonly string[]
  readonly passthroughHosts: readonly string[]
}

/** What to do with a request for a host. */
export type Decision =
  | { readonly kind: 'tenant', readonly route: Route }
  | { readonly kind: 'passthrough' }
  | { readonly kind: 'unknown' }

const PASSTHROUGH: Decision = Object.freeze({ kind: 'passthrough' })
const UNKNOWN: Decision = Object.freeze({ kind: 'unknown' })
/** Decisions kept (a power of two). */
const DECISIONS = 16_384

/** A resolver bound to the routing options; call `resolve(index, host)` per request. */
export class Resolver {
  readonly #www: boolean
  readonly #passthrough: ReadonlySet<string>
  readonly #reserved: ReadonlySet<string>
  /** '.example.com' suffixes, longest first so nested bases pick the most specific. */
  readonly #wildcardSuffixes: readonly string[]
  /**
   * Recent decisions, direct-mapped by route generation, so a hit on a host with traffic
   * allocates nothing. Not a WeakMap per route: the index makes route objects on demand, and a
   * WeakMap entry for each (a million over a walk of every host) costs more than the lookup.
   */
  readonly #decisions: Array<Extract<Decision, { kind: 'tenant' }> | undefined> = new Array<Extract<Decision, { kind: 'tenant' }> | undefined>(DECISIONS).fill(undefined)

  constructor (opts: ResolveOptions) {
    this.#www = opts.wwwFallback
    this.#passthrough = new Set(opts.passthroughHosts)
    this.#reserved = new Set(opts.reservedLabels)
    this.#wildcardSuffixes = [...opts.wildcardDomains].sort((a, b) => b.length - a.length).map((d) => `.${d}`)
  }

  /** Decides for a canonical host: passthrough, exact domain, www. fallback, then wildcard slug. */
  resolve (index: RegistryIndex, host: string): Decision {
    if (this.#passthrough.has(host)) return PASSTHROUGH
    const exact = index.byHost.get(host)
    if (exact !== undefined) return this.#decision(exact)
    if (this.#www && host.startsWith('www.')) {
      const bare = index.byHost.get(host.slice(4))
      if (bare !== undefined) return this.#decision(bare)
    }
    for (const suffix of this.#wildcardSuffixes) {
      if (host.length > suffix.length && host.endsWith(suffix)) {
        const label = host.slice(0, host.length - suffix.length)
        // Only one label deep: a.b.example.com is not tenant "a.b".
        if (label.includes('.') || this.#reserved.has(label)) return UNKNOWN
        const route = index.bySlug.get(label)
        return route === undefined ? UNKNOWN : this.#decision(route)
      }
    }
    return UNKNOWN
  }

  #decision (route: Route): Decision {
    const k = route.generation & (DECISIONS - 1)
    let d = this.#decisions[k]
    if (d === undefined || d.route !== route) {
      d = Object.freeze({ kind: 'tenant', route } as const)
      this.#decisions[k] = d
    }
    return d
  }
}
