/**
 * The app's own health, asked on its health path (upstream.healthCheck.path):
 * - active checks: every address of every pool on an interval; a failing address leaves the
 *   rotation until a check passes again (passive ejection handles the time in between);
 * - the /up gate of traffic.healthMode upstream: one cached answer shared by concurrent checks,
 *   so a load balancer polling /up does not multiply requests to the app.
 */
import { request, type Dispatcher } from 'undici'
import type { UpstreamAddress, UpstreamPool, UpstreamPools } from './upstream-pools.js'

/** What the checks need. */
export interface HealthOptions {
  readonly path: string
  readonly intervalMs: number
  readonly timeoutMs: number
  readonly cacheMs: number
  /** Host header of checks (upstream.hostHeader, else the address's configured host). */
  readonly hostHeader: string | null
  readonly dispatcher: Dispatcher
  readonly onChange?: (pool: UpstreamPool, address: UpstreamAddress, ok: boolean, detail: string) => void
}

/** One health request; true for a 2xx/3xx answer within the timeout. */
async function check (origin: string, host: string, opts: HealthOptions): Promise<{ ok: boolean, detail: string }> {
  try {
    const res = await request(`${origin}${opts.path}`, {
      dispatcher: opts.dispatcher,
      headers: { host, 'user-agent': 'tenant-proxy-health' },
      headersTimeout: opts.timeoutMs,
      bodyTimeout: opts.timeoutMs,
      signal: AbortSignal.timeout(opts.timeoutMs)
    })
    await res.body.dump()
    return { ok: res.statusCode < 400, detail: `status ${res.statusCode}` }
  } catch (err) {
    const e = err as { code?: string, cause?: { code?: string }, message?: string }
    return { ok: false, detail: e.cause?.code ?? e.code ?? e.message ?? String(err) }
  }
}

/** Active checks of every address, and the cached gate for /up. */
export class UpstreamHealth {
  readonly #pools: UpstreamPools
  readonly #opts: HealthOptions
  #timer: NodeJS.Timeout | null = null
  #cached: { at: number, ok: boolean } | null = null
  #pending: Promise<boolean> | null = null

  constructor (pools: UpstreamPools, opts: HealthOptions) {
    this.#pools = pools
    this.#opts = opts
  }

  /** Starts the periodic checks (the first run right away). */
  start (): void {
    void this.checkAll()
    this.#timer = setInterval(() => { void this.checkAll() }, this.#opts.intervalMs)
    this.#timer.unref()
  }

  /** Stops the periodic checks. */
  stop (): void {
    if (this.#timer !== null) clearInterval(this.#timer)
    this.#timer = null
  }

  /** Checks every address of every pool once. */
  async checkAll (): Promise<void> {
    await Promise.all(this.#pools.all().flatMap((pool) => pool.addresses.map(async (a) => {
      const generation = a.generation
      const r = await check(a.origin, this.#hostOf(a), this.#opts)
      if (r.ok) pool.succeeded(a, generation)
      if (r.ok !== a.checkOk) this.#opts.onChange?.(pool, a, r.ok, r.detail)
      a.checkOk = r.ok
    })))
  }

  /** Whether the default pool's app answers its health path (cached for cacheMs). */
  async healthy (): Promise<boolean> {
    const now = Date.now()
    if (this.#cached !== null && now - this.#cached.at < this.#opts.cacheMs) return this.#cached.ok
    this.#pending ??= (async () => {
      const address = this.#pools.default.pick()
      const ok = address === undefined ? false : (await check(address.origin, this.#hostOf(address), this.#opts)).ok
      this.#cached = { at: Date.now(), ok }
      this.#pending = null
      return ok
    })()
    return await this.#pending
  }

  #hostOf (a: UpstreamAddress): string {
    return this.#opts.hostHeader ?? new URL(a.configured).host
  }
}
