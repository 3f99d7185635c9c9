/**
 * Upstream pools: the configured origins of the default pool and of each named pool, expanded to
 * addresses. Plain-http host names are re-resolved on an interval and every address is used (a
 * Docker network alias resolves to the old and the new container during a deploy); addresses
 * are picked round-robin, and an address that keeps failing to connect is ejected for a while
 * (doubling up to a ceiling while it keeps failing) and then probed. All state is in memory;
 * nothing here does I/O on the request path.
 *
 * Failures are counted per incident, not per request: when an app dies with 16 requests in
 * flight, all 16 fail in the same instant, and counting each one ejected the address again with
 * every failure past the threshold, the period doubling to its ceiling (30 s out for a restart
 * that took 100 ms). Every attempt notes the address's generation when it starts; an ejection
 * or a recovery starts a new generation, and an outcome of an attempt begun in an earlier one
 * belongs to an incident already settled.
 */
import { lookup as dnsLookup } from 'node:dns/promises'
import { isIP } from 'node:net'

/** One address requests can be sent to. */
export class UpstreamAddress {
  /** Consecutive failures (connection refused/reset) in this generation. */
  failures = 0
  /** Ejections since the address last answered (the period doubles with each). */
  ejections = 0
  /** Length of the current or last ejection period (0 once the address answers). Milliseconds. */
  ejectionMs = 0
  /** ms since the epoch until which the address gets no traffic (unless nothing else is left). */
  ejectedUntil = 0
  /**
   * True from an ejection until the address answers a request or accepts a connection again: a
   * dead address stays failing between its ejections, so the gauge and alerts do not see it come
   * and go with every probe.
   */
  failing = false
  /** False while the active health check fails. */
  checkOk = true
  /** Bumped by every ejection and recovery; see the module comment. */
  generation = 0

  constructor (
    /** Where requests go: http://ip:port for resolved names, else the configured origin. */
    readonly origin: string,
    /** The configured origin it came from. */
    readonly configured: string
  ) {}

  /**
   * True when the address is picked for traffic at `now`. An address whose ejection has ended is
   * picked again although it has not answered yet: that request is the probe.
   */
  inRotation (now: number): boolean {
    return this.checkOk && now >= this.ejectedUntil
  }

  /** True when the address is known to work: in rotation and not failing since an ejection. */
  usable (now: number): boolean {
    return !this.failing && this.inRotation(now)
  }
}

/** Tuning of ejection and DNS. */
export interface PoolOptions {
  readonly dnsRefreshMs: number
  readonly ejectAfterFailures: number
  readonly ejectMinMs: number
  readonly ejectMaxMs: number
  /** Resolves a host name to addresses (tests inject one). */
  readonly lookup?: (hostname: string) => Promise<Array<{ address: string, family: number }>>
  readonly now?: () => number
  /** Called when an address is ejected (metrics, logs). */
  readonly onEject?: (pool: UpstreamPool, address: UpstreamAddress, forMs: number) => void
  /**
   * Checks that an address accepts connections (a TCP connect); run when an ejection ends and the
   * address has not answered since, so its state is known without traffic. Absent: no probes.
   */
  readonly probe?: (address: UpstreamAddress) => Promise<boolean>
  /** Called when a re-resolution fails (the previous addresses stay). */
  readonly onDnsError?: (hostname: string, error: unknown) => void
}

/** One pool: the default one (name null) or a named one. */
export class UpstreamPool {
  #addresses: UpstreamAddress[] = []
  #cursor = 0
  readonly #opts: PoolOptions
  readonly #byTarget = new Map<string, UpstreamAddress[]>()
  readonly #probes = new Set<NodeJS.Timeout>()
  #stopped = false

  constructor (readonly name: string | null, readonly targets: readonly string[], opts: PoolOptions) {
    this.#opts = opts
    for (const target of targets) this.#byTarget.set(target, [new UpstreamAddress(target, target)])
    this.#rebuild()
  }

  /** Every address of the pool (a fresh array after each DNS change). */
  get addresses (): readonly UpstreamAddress[] {
    return this.#addresses
  }

  /**
   * The next usable address not in `exclude`, round-robin. When none is usable (all ejected or
   * failing checks), the one whose ejection ends first: trying beats answering 502 outright.
   */
  pick (exclude?: ReadonlySet<UpstreamAddress>): UpstreamAddress | undefined {
    const all = this.#addresses
    const n = all.length
    const now = (this.#opts.now ?? Date.now)()
    for (let k = 0; k < n; k++) {
      const a = all[(this.#cursor + k) % n] as UpstreamAddress
      if ((exclude === undefined || !exclude.has(a)) && a.inRotation(now)) {
        this.#cursor = (this.#cursor + k + 1) % n
        return a
      }
    }
    let best: UpstreamAddress | undefined
    for (const a of all) {
      if (exclude !== undefined && exclude.has(a)) continue
      if (best === undefined || a.ejectedUntil < best.ejectedUntil) best = a
    }
    return best
  }

  /**
   * The address answered (or, from a probe, accepted a connection) in an attempt begun in
   * `generation`. An answer clears everything; a connection only ends `failing` and keeps the
   * doubling, since an app that accepts and then drops connections is not back yet.
   */
  succeeded (a: UpstreamAddress, generation = a.generation, answered = true): void {
    if (a.failures === 0 && a.ejections === 0) return
    // Begun before the last ejection: an answer on an old connection says nothing about new ones
    // (an app that stopped listening still finishes the requests it has).
    if (generation !== a.generation) return
    a.failures = 0
    a.failing = false
    if (!answered) return
    // Closes the incident: failures of attempts begun while it was out no longer count.
    if (a.ejections !== 0) a.generation++
    a.ejections = 0
    a.ejectionMs = 0
    a.ejectedUntil = 0
  }

  /**
   * An attempt begun in `generation` failed to connect or lost its connection; ejects the address
   * past the threshold. After an ejection the first failure is enough: that is the probe failing.
   */
  failed (a: UpstreamAddress, generation = a.generation): void {
    if (generation !== a.generation) return
    const o = this.#opts
    a.failures++
    if (a.failures < (a.ejections > 0 ? 1 : o.ejectAfterFailures)) return
    const forMs = Math.min(o.ejectMaxMs, o.ejectMinMs * 2 ** Math.min(a.ejections, 30))
    a.failures = 0
    a.ejections++
    a.generation++
    a.failing = true
    a.ejectionMs = forMs
    a.ejectedUntil = (o.now ?? Date.now)() + forMs
    o.onEject?.(this, a, forMs)
    this.#scheduleProbe(a, a.generation, forMs)
  }

  /** Stops the probes of ejected addresses. */
  stop (): void {
    this.#stopped = true
    for (const timer of this.#probes) clearTimeout(timer)
    this.#probes.clear()
  }

  #scheduleProbe (a: UpstreamAddress, generation: number, inMs: number): void {
    if (this.#opts.probe === undefined || this.#stopped) return
    const timer = setTimeout(() => { this.#probes.delete(timer); void this.#probe(a, generation) }, inMs)
    timer.unref()
    this.#probes.add(timer)
  }

  /** The ejection that began `generation` has ended: unless traffic settled it, see whether `a` accepts connections. */
  async #probe (a: UpstreamAddress, generation: number): Promise<void> {
    const probe = this.#opts.probe
    // A later ejection schedules its own probe; a recovery needs none.
    if (probe === undefined || this.#stopped || a.generation !== generation || !a.failing || !this.#addresses.includes(a)) return
    // Timers may fire a millisecond before the wall clock says the period is over.
    const left = a.ejectedUntil - (this.#opts.now ?? Date.now)()
    if (left > 0) {
      this.#scheduleProbe(a, generation, left)
      return
    }
    if (await probe(a)) this.succeeded(a, generation, false)
    else this.failed(a, generation)
  }

  /** Re-resolves plain-http host names; keeps the state of addresses that stay. */
  async refresh (): Promise<void> {
    const lookup = this.#opts.lookup ?? (async (host: string) => await dnsLookup(host, { all: true }))
    let changed = false
    for (const target of this.targets) {
      const url = new URL(target)
      // TLS needs the name for SNI and certificate checks: https origins are dialled by name.
      if (url.protocol !== 'http:' || isIP(url.hostname.replace(/^\[|\]$/g, '')) !== 0) continue
      let resolved: Array<{ address: string, family: number }>
      try {
        resolved = await lookup(url.hostname)
      } catch (err) {
        this.#opts.onDnsError?.(url.hostname, err)
        continue
      }
      if (resolved.length === 0) continue
      const port = url.port === '' ? '80' : url.port
      const previous = new Map((this.#byTarget.get(target) ?? []).map((a) => [a.origin, a]))
      const next = [...new Set(resolved.map((r) => `http://${r.family === 6 ? `[${r.address}]` : r.address}:${port}`))].sort()
        .map((origin) => previous.get(origin) ?? new UpstreamAddress(origin, target))
      const before = [...previous.keys()].sort().join(' ')
      if (before !== next.map((a) => a.origin).join(' ')) {
        this.#byTarget.set(target, next)
        changed = true
      }
    }
    if (changed) this.#rebuild()
  }

  #rebuild (): void {
    this.#addresses = [...this.#byTarget.values()].flat()
    this.#cursor = this.#cursor % Math.max(1, this.#addresses.length)
  }
}

/** The default pool plus named ones, with DNS refresh. */
export class UpstreamPools {
  readonly default: UpstreamPool
  readonly #named = new Map<string, UpstreamPool>()
  readonly #opts: PoolOptions
  #timer: NodeJS.Timeout | null = null

  constructor (upstream: { urls: readonly string[], pools: Readonly<Record<string, readonly string[]>> }, opts: PoolOptions) {
    this.#opts = opts
    this.default = new UpstreamPool(null, upstream.urls, opts)
    for (const [name, urls] of Object.entries(upstream.pools)) this.#named.set(name, new UpstreamPool(name, urls, opts))
  }

  /** The pool of a tenant (null = default); undefined when the name is not configured. */
  get (name: string | null): UpstreamPool | undefined {
    return name === null ? this.default : this.#named.get(name)
  }

  /** Every pool, default first. */
  all (): UpstreamPool[] {
    return [this.default, ...this.#named.values()]
  }

  /** Resolves every pool once, then keeps re-resolving on the interval. */
  async start (): Promise<void> {
    await Promise.all(this.all().map(async (p) => await p.refresh()))
    if (this.#opts.dnsRefreshMs > 0) {
      this.#timer = setInterval(() => { for (const p of this.all()) void p.refresh() }, this.#opts.dnsRefreshMs)
      this.#timer.unref()
    }
  }

  /** Stops the DNS refresh and the probes. */
  stop (): void {
    if (this.#timer !== null) clearInterval(this.#timer)
    this.#timer = null
    for (const pool of this.all()) pool.stop()
  }
}
