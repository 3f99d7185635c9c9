/**
 * Requests held for paused tenants (`tenants pause`, the cut-over of `tenants move`), as
 * kamal-proxy's `pause` holds them: parked, not refused, until the registry announces a change of
 * their tenant, then decided again (resumed: forwarded, with the new database if it moved; still
 * paused: held on). A request held past its pause's timeout, or one that cannot be held (a cap is
 * reached, the proxy is draining), is told so by its owner with 503 + Retry-After. A client that
 * leaves while held is simply dropped from the queue (its 499 is the request lifecycle's).
 *
 * The queue knows nothing of HTTP: each held request brings two callbacks. Every way out of the
 * queue is counted once in the held-request metrics.
 */
import type { HeldEnd, ProxyMetrics } from '../ops/metrics.js'

/** Caps on held requests (routing.pause.*). */
export interface HeldLimits {
  readonly maxPerTenant: number
  readonly maxTotal: number
}

/** What a held request's owner does when the queue lets go of it. */
export interface HeldHandlers {
  /**
   * Its tenant changed: decide again. Returns the tenant's slug and hold time when it is still
   * paused (the request stays held, its deadline counted from when it was first held), or null
   * when the owner forwarded or answered it.
   */
  readonly recheck: () => { readonly slug: string, readonly holdMs: number } | null
  /** It waited past its deadline, or the proxy drains: the owner answers 503 + Retry-After. */
  readonly expire: (end: 'timeout' | 'draining') => void
}

/** A held request, as its owner sees it. */
export interface HeldTicket {
  /** The client left: drop it from the queue (no callback runs). */
  cancel (): void
}

interface Entry extends HeldTicket {
  slug: string
  readonly since: number
  holdMs: number
  timer: NodeJS.Timeout | null
  readonly handlers: HeldHandlers
}

/** The held requests of one proxy process. */
export class HeldRequests {
  readonly #limits: HeldLimits
  readonly #metrics: ProxyMetrics
  readonly #byTenant = new Map<string, Set<Entry>>()
  #total = 0
  #draining = false

  constructor (limits: HeldLimits, metrics: ProxyMetrics) {
    this.#limits = limits
    this.#metrics = metrics
  }

  /** Requests held now. */
  get size (): number {
    return this.#total
  }

  /** Requests held now for `slug`. */
  heldFor (slug: string): number {
    return this.#byTenant.get(slug)?.size ?? 0
  }

  /**
   * Holds a request of paused tenant `slug` for up to `holdMs`. Returns its ticket, or why it
   * cannot be held (the caller answers 503 + Retry-After at once): a cap is reached, or draining.
   */
  hold (slug: string, holdMs: number, handlers: HeldHandlers): HeldTicket | 'overflow' | 'draining' {
    if (this.#draining) {
      this.#metrics.heldRefused.labels('draining').inc()
      return 'draining'
    }
    if (this.#total >= this.#limits.maxTotal || this.heldFor(slug) >= this.#limits.maxPerTenant) {
      this.#metrics.heldRefused.labels('overflow').inc()
      return 'overflow'
    }
    const entry: Entry = {
      slug,
      since: performance.now(),
      holdMs,
      timer: null,
      handlers,
      cancel: () => { if (this.#remove(entry)) this.#ended(entry, 'client_closed') }
    }
    this.#metrics.heldTotal.inc()
    this.#insert(entry)
    return entry
  }

  /**
   * The registry changed these tenants (by slug, old and new slugs of a renamed one), or with null
   * possibly every tenant (a full reload): each of their held requests is decided again.
   */
  release (slugs: Iterable<string> | null): void {
    if (this.#total === 0) return
    const entries: Entry[] = []
    if (slugs === null) {
      for (const set of this.#byTenant.values()) entries.push(...set)
    } else {
      for (const slug of new Set(slugs)) entries.push(...(this.#byTenant.get(slug) ?? []))
    }
    // One owner's failure must not strand the others: all are rechecked, then the first error thrown.
    let failure: { err: unknown } | null = null
    for (const entry of entries) {
      if (!this.#remove(entry)) continue
      let still: { slug: string, holdMs: number } | null
      try {
        still = entry.handlers.recheck()
      } catch (err) {
        this.#ended(entry, 'released')
        failure ??= { err }
        continue
      }
      if (still === null) {
        this.#ended(entry, 'released')
        continue
      }
      // Still paused (another change of the tenant, a new timeout): held on, from the same start.
      entry.slug = still.slug
      entry.holdMs = still.holdMs
      this.#insert(entry)
    }
    if (failure !== null) throw failure.err
  }

  /** Shutdown: every held request and every later one is answered 503 (nothing resumes them now). */
  drain (): void {
    this.#draining = true
    const entries = [...this.#byTenant.values()].flatMap((set) => [...set])
    for (const entry of entries) this.#expire(entry, 'draining')
  }

  #insert (entry: Entry): void {
    let set = this.#byTenant.get(entry.slug)
    if (set === undefined) {
      set = new Set()
      this.#byTenant.set(entry.slug, set)
    }
    set.add(entry)
    this.#total++
    this.#metrics.heldNow = this.#total
    const left = entry.since + entry.holdMs - performance.now()
    if (left <= 0) {
      // Re-held after its deadline passed: time is up now, not one more timer turn later.
      queueMicrotask(() => { this.#expire(entry, 'timeout') })
      return
    }
    entry.timer = setTimeout(() => { this.#expire(entry, 'timeout') }, left)
    // Held requests alone must not keep a stopping process alive.
    entry.timer.unref()
  }

  /** Takes `entry` out of the queue; false when it already left. */
  #remove (entry: Entry): boolean {
    const set = this.#byTenant.get(entry.slug)
    if (set === undefined || !set.delete(entry)) return false
    if (set.size === 0) this.#byTenant.delete(entry.slug)
    if (entry.timer !== null) clearTimeout(entry.timer)
    entry.timer = null
    this.#total--
    this.#metrics.heldNow = this.#total
    return true
  }

  #expire (entry: Entry, end: 'timeout' | 'draining'): void {
    if (!this.#remove(entry)) return
    this.#ended(entry, end)
    this.#metrics.heldRefused.labels(end).inc()
    entry.handlers.expire(end)
  }

  #ended (entry: Entry, end: HeldEnd): void {
    this.#metrics.heldDuration.labels(end).observe((performance.now() - entry.since) / 1000)
  }
}
