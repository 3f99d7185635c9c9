/**
 * Descriptor signing and the per-host cache that keeps signing off the per-request path.
 */
import { tpError } from '../errors.js'
import type { Signer, Keyring } from './keyring.js'

/** The tenant facts a descriptor states. */
export interface DescriptorTarget {
  readonly slug: string
  readonly epoch: number
  readonly db: { readonly name: string, readonly host: string, readonly port: number }
  /**
   * When set, two targets with the same generation state the same facts (the registry index makes
   * route objects on demand, so one tenant's unchanged facts may come in another object).
   */
  readonly generation?: number
}

/** Descriptor v1 claims (docs/descriptor.md). */
export interface DescriptorClaims {
  v: 1
  iss: string
  aud: string
  sub: string
  host: string
  db: { name: string, host: string, port: number }
  epoch: number
  iat: number
  nbf: number
  exp: number
}

/** Signs claims as a compact JWS (RFC 7515 section 7.1), unpadded base64url. */
export function signDescriptor (claims: DescriptorClaims, signer: Signer): string {
  const input = `${signer.headerB64}.${Buffer.from(JSON.stringify(claims)).toString('base64url')}`
  return `${input}.${signer.sign(input)}`
}

/** Options of the cache. */
export interface DescriptorCacheOptions {
  keyring: Keyring
  issuer: string
  audience: string
  ttlS: number
  refreshMarginS: number
  /** Clock in ms (tests inject one). */
  now?: () => number
  /** Called after each signature (metrics). */
  onSign?: () => void
  /** Uniform in [0, 1): spreads refreshes (tests inject a constant). */
  random?: () => number
}

interface Entry {
  target: DescriptorTarget
  token: string
  /** The token's exp, seconds. */
  exp: number
  /** When to sign anew, ms: exp - refreshMarginS, less up to half the margin of jitter. */
  refreshAt: number
}

/**
 * One token per canonical host, reused until `refreshMarginS` before it expires, less a random
 * part of up to half the margin. An entry is only valid for the target it was signed for (the same
 * object, or the same generation): the registry index gives a tenant a new generation when
 * anything about it changes, so a changed tenant is re-signed on its next request.
 *
 * Why the jitter: hosts signed together (a restart, a full reload, a burst of new hosts) would
 * otherwise all fall due in the same second, ttlS - refreshMarginS later, and again every cycle;
 * a thousand ES256 signatures at once hold the event loop ~40 ms, which showed up as the proxy's
 * p99 in the data-path benchmark (docs/benchmarks.md). Spread over half the margin, the same
 * signatures cost a fraction of a per cent of one CPU and no request waits behind them.
 */
export class DescriptorCache {
  readonly #opts: Required<DescriptorCacheOptions>
  readonly #entries = new Map<string, Entry>()

  constructor (opts: DescriptorCacheOptions) {
    const { ttlS, refreshMarginS } = opts
    // A margin at or past the TTL would make every request sign: exactly what the cache prevents.
    if (!Number.isInteger(ttlS) || ttlS <= 0) throw tpError('TENANT_PROXY_ERR_CONFIG_INVALID', [`descriptor.ttlS must be a positive integer, got ${ttlS}`])
    if (!Number.isInteger(refreshMarginS) || refreshMarginS < 0 || refreshMarginS >= ttlS) {
      throw tpError('TENANT_PROXY_ERR_CONFIG_INVALID', [`descriptor.refreshMarginS must be an integer from 0 to ttlS - 1 (${ttlS - 1}), got ${refreshMarginS}`])
    }
    // Optional hooks resolve once to a default, so `get` never tests for undefined.
    this.#opts = { ...opts, now: opts.now ?? Date.now, onSign: opts.onSign ?? noop, random: opts.random ?? Math.random }
  }

  /** The descriptor for `target` requested as `host`. */
  get (target: DescriptorTarget, host: string): string {
    const now = this.#opts.now()
    const entry = this.#entries.get(host)
    // The hit path reads one map entry and allocates nothing: it runs on every proxied request.
    if (entry !== undefined && sameTarget(entry.target, target) && now < entry.refreshAt) return entry.token
    const { token, exp } = this.#sign(target, host, now)
    const refreshAt = this.#refreshAt(exp)
    if (entry !== undefined) {
      entry.target = target
      entry.token = token
      entry.exp = exp
      entry.refreshAt = refreshAt
    } else {
      this.#entries.set(host, { target, token, exp, refreshAt })
    }
    return token
  }

  /**
   * The descriptor a request for `host` would carry now, with its `exp` (seconds), for a caller
   * outside a request (the ops descriptor API). A cached token is reused as `get` would reuse it;
   * a new one is not cached, so a loop over every tenant (a migration) leaves no token per tenant
   * behind in memory: the cache holds the hosts that get traffic, as before.
   */
  issue (target: DescriptorTarget, host: string): { token: string, exp: number } {
    const now = this.#opts.now()
    const entry = this.#entries.get(host)
    if (entry !== undefined && sameTarget(entry.target, target) && now < entry.refreshAt) return { token: entry.token, exp: entry.exp }
    return this.#sign(target, host, now)
  }

  #refreshAt (exp: number): number {
    const marginMs = this.#opts.refreshMarginS * 1000
    return exp * 1000 - marginMs - Math.floor(this.#opts.random() * marginMs / 2)
  }

  #sign (target: DescriptorTarget, host: string, now: number): { token: string, exp: number } {
    const iat = Math.floor(now / 1000)
    const exp = iat + this.#opts.ttlS
    const token = signDescriptor({
      v: 1,
      iss: this.#opts.issuer,
      aud: this.#opts.audience,
      sub: target.slug,
      host,
      db: { name: target.db.name, host: target.db.host, port: target.db.port },
      epoch: target.epoch,
      iat,
      nbf: iat,
      exp
    }, this.#opts.keyring.signer)
    this.#opts.onSign()
    return { token, exp }
  }

  /** Forgets one host's token. */
  delete (host: string): void {
    this.#entries.delete(host)
  }

  /** Keeps only the tokens of hosts for which `keep` is true (after a full registry load). */
  retain (keep: (host: string) => boolean): void {
    for (const host of this.#entries.keys()) if (!keep(host)) this.#entries.delete(host)
  }

  /** Forgets every token. */
  clear (): void {
    this.#entries.clear()
  }

  /** Number of cached tokens. */
  get size (): number {
    return this.#entries.size
  }
}

function noop (): void {}

/** The same object, or two routes of the same generation (see DescriptorTarget.generation). */
function sameTarget (a: DescriptorTarget, b: DescriptorTarget): boolean {
  return a === b || (a.generation !== undefined && a.generation === b.generation)
}
