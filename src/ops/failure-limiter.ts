/**
 * Refused bearer tokens per peer address: a token bucket of `burst` failures refilled at
 * `perSecond`. A peer with an empty bucket is refused (429) before its token is even compared,
 * so guessing runs at `perSecond` per address at most and a flood of bad tokens costs neither a
 * hash nor a log line per request. Configured tokens are at least 32 characters, so the limit is
 * not what makes guessing hopeless; it keeps a misbehaving caller cheap and visible.
 */

/** Options; the defaults are the proxy's. */
export interface FailureLimiterOptions {
  /** Failures a peer may have in a row before it is refused. */
  readonly burst?: number
  /** Failures forgiven per second. */
  readonly perSecond?: number
  /** Peers tracked at most; past that, new peers are not tracked (the limiter fails open, never shut). */
  readonly maxPeers?: number
  /** Clock in ms (tests inject one). */
  readonly now?: () => number
}

interface Bucket { tokens: number, at: number }

/** Per-peer failure budget. */
export class FailureLimiter {
  readonly #burst: number
  readonly #perMs: number
  readonly #maxPeers: number
  readonly #now: () => number
  readonly #buckets = new Map<string, Bucket>()

  constructor (opts: FailureLimiterOptions = {}) {
    this.#burst = opts.burst ?? 10
    this.#perMs = (opts.perSecond ?? 1) / 1000
    this.#maxPeers = opts.maxPeers ?? 10_000
    this.#now = opts.now ?? Date.now
  }

  /** Seconds until `peer` may try again, or 0 when it may now. */
  retryAfterS (peer: string): number {
    const tokens = this.#tokens(peer, this.#now())
    return tokens >= 1 ? 0 : Math.max(1, Math.ceil((1 - tokens) / (this.#perMs * 1000)))
  }

  /** Records a refused token from `peer`. */
  fail (peer: string): void {
    const now = this.#now()
    const tokens = this.#tokens(peer, now)
    const bucket = this.#buckets.get(peer)
    if (bucket !== undefined) {
      bucket.tokens = Math.max(0, tokens - 1)
      bucket.at = now
      return
    }
    if (this.#buckets.size >= this.#maxPeers) this.#prune(now)
    if (this.#buckets.size < this.#maxPeers) this.#buckets.set(peer, { tokens: this.#burst - 1, at: now })
  }

  /** Peers tracked (tests). */
  get size (): number {
    return this.#buckets.size
  }

  #tokens (peer: string, now: number): number {
    const b = this.#buckets.get(peer)
    return b === undefined ? this.#burst : Math.min(this.#burst, b.tokens + (now - b.at) * this.#perMs)
  }

  /** Forgets peers whose bucket has refilled: they are as if never seen. */
  #prune (now: number): void {
    for (const [peer, b] of this.#buckets) if (b.tokens + (now - b.at) * this.#perMs >= this.#burst) this.#buckets.delete(peer)
  }
}
