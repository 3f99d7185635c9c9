/**
 * Key sets that never stall the app (docs/descriptor.md, "Key sets"). One load at a time (single
 * flight); the last good key set is served while a refresh runs in the background, after its
 * max-age or on an unknown kid (at most once per cooldown); a failed refresh keeps the last good
 * set and is not retried before the cooldown. Only the very first load, while no key set is held
 * yet, makes a request wait, bounded by the fetch timeout: a hanging or dead key set server adds no
 * latency to any request after the first successful load.
 */
import { readFile } from 'node:fs/promises'
import { request as httpRequest } from 'node:http'
import { request as httpsRequest } from 'node:https'
import { DescriptorError } from './errors.js'
import { keysFromJwks, keysFromText, type KeyMap, type VerificationKey } from './keys.js'

/** Key set lifetime when the answer has no `Cache-Control: max-age`, in seconds. */
export const DEFAULT_JWKS_MAX_AGE_S = 60
/** Minimum time between two loads caused by unknown kids or after a failed load, in seconds. */
export const DEFAULT_JWKS_COOLDOWN_S = 30
/** Timeout of one key set fetch, in ms. */
export const DEFAULT_FETCH_TIMEOUT_MS = 2000
/** Largest key set accepted, in bytes. */
const MAX_JWKS_BYTES = 1 << 20

/** Where verification keys come from, by kid. */
export interface KeySource {
  /** The key for `kid`, or undefined. Waits only while no key set was ever loaded. */
  get (kid: string): Promise<VerificationKey | undefined>
  /** Loads now when nothing is held yet (to warm the cache at start); rejects with jwks_unavailable. */
  prefetch (): Promise<void>
  /** Resolves once no load is in flight (a background refresh has finished, successfully or not). */
  settled (): Promise<void>
  /** Loads started, successful or not. */
  readonly fetches: number
}

/** Keys given inline: nothing to load. */
export function staticKeys (keys: KeyMap): KeySource {
  return { get: async (kid) => keys.get(kid), prefetch: async () => {}, settled: async () => {}, fetches: 0 }
}

/** One load: the keys and, for a URL, the max-age its answer allowed. */
export type KeyLoader = () => Promise<{ keys: KeyMap, maxAgeS: number | null }>

export interface CachedKeySetOptions {
  /** Names the source in messages (a URL without credentials or query, a file path). */
  where: string
  now: () => number
  cooldownS: number
  /** Overrides the answer's max-age, in seconds. */
  maxAgeS?: number | undefined
  /** Hears failed background loads (the request that triggered them was not delayed). */
  onError?: ((err: Error) => void) | undefined
}

export class CachedKeySet implements KeySource {
  fetches = 0
  #keys: KeyMap | null = null
  /** When the held keys go stale (max-age after the load that brought them). */
  #staleAt = 0
  /** No load before this (the cooldown after a failed load, from its failure). */
  #retryAt = 0
  #lastAttemptAt: number | null = null
  #inflight: Promise<void> | null = null

  constructor (private readonly load: KeyLoader, private readonly opts: CachedKeySetOptions) {}

  async get (kid: string): Promise<VerificationKey | undefined> {
    if (this.#keys === null) {
      // Nothing held yet: the only case where a request waits (sharing the one load in flight).
      await this.#loadOnce()
      return this.#held()?.get(kid)
    }
    const now = this.opts.now()
    if (now >= this.#staleAt && now >= this.#retryAt) this.#background()
    const key = this.#keys.get(kid)
    // An unknown kid may be the next key of a rotation: look again in the background, at most once
    // per cooldown (a flood of forged kids must not become a flood of fetches). This token is refused.
    if (key === undefined && now >= this.#retryAt && (this.#lastAttemptAt === null || now - this.#lastAttemptAt >= this.opts.cooldownS * 1000)) this.#background()
    return key
  }

  async prefetch (): Promise<void> {
    if (this.#keys === null) await this.#loadOnce()
  }

  #held (): KeyMap | null {
    return this.#keys
  }

  async settled (): Promise<void> {
    while (this.#inflight !== null) await this.#inflight.catch(() => {})
  }

  #background (): void {
    if (this.#inflight !== null) return
    this.#loadOnce().catch((err: unknown) => this.opts.onError?.(err as Error))
  }

  #loadOnce (): Promise<void> {
    this.#inflight ??= this.#attempt().finally(() => { this.#inflight = null })
    return this.#inflight
  }

  async #attempt (): Promise<void> {
    const at = this.opts.now()
    this.#lastAttemptAt = at
    this.fetches++
    try {
      const { keys, maxAgeS } = await this.load()
      this.#keys = keys
      // Bounded both ways: max-age=0 must not mean a fetch per request, nor a huge value never.
      const age = this.opts.maxAgeS ?? Math.min(Math.max(maxAgeS ?? DEFAULT_JWKS_MAX_AGE_S, 1), 3600)
      this.#staleAt = at + age * 1000
    } catch (err) {
      // Keep the last good keys, and leave a failing server alone for the cooldown, counted from
      // the failure: a fetch that hung until its timeout is not retried the moment it gives up.
      this.#retryAt = this.opts.now() + this.opts.cooldownS * 1000
      throw new DescriptorError('jwks_unavailable', `cannot load the key set from ${this.opts.where}: ${reasonOf(err)}`, { cause: err })
    }
  }
}

/** A JWKS URL: GET with an overall deadline, no redirects and a 1 MiB cap. */
export function urlLoader (url: URL, timeoutMs: number): KeyLoader {
  return async () => {
    const { body, maxAgeS } = await fetchText(url, timeoutMs)
    return { keys: keysFromJwks(JSON.parse(body), 'key set'), maxAgeS }
  }
}

/** A key file (JWKS, PEM or hs256:<secret>), read again after each max-age. */
export function fileLoader (file: string): KeyLoader {
  return async () => ({ keys: keysFromText(await readFile(file, 'utf8'), file), maxAgeS: null })
}

async function fetchText (url: URL, timeoutMs: number): Promise<{ body: string, maxAgeS: number | null }> {
  const request = url.protocol === 'https:' ? httpsRequest : httpRequest
  return await new Promise((resolve, reject) => {
    // agent: false: one connection per fetch, closed after it, so a verifier never keeps a process alive.
    const req = request(url, { method: 'GET', agent: false, headers: { accept: 'application/json' } }, (res) => {
      const status = res.statusCode ?? 0
      // Redirects are never followed (docs/descriptor.md): a key set URL that redirects is
      // misconfigured or hijacked, and a 3xx is a failed fetch like any other non-2xx.
      if (status < 200 || status > 299) {
        res.resume()
        req.destroy()
        reject(new Error(`HTTP ${status}`))
        return
      }
      const chunks: Buffer[] = []
      let size = 0
      res.on('data', (c: Buffer) => {
        size += c.length
        if (size > MAX_JWKS_BYTES) req.destroy(new Error('key set larger than 1 MiB'))
        else chunks.push(c)
      })
      res.on('end', () => { clearTimeout(timer); resolve({ body: Buffer.concat(chunks).toString('utf8'), maxAgeS: maxAgeOf(res.headers['cache-control']) }) })
      res.on('error', reject)
    })
    // One deadline for the whole exchange: an idle-socket timeout would let a server that
    // trickles a byte at a time hold the fetch open for ever.
    const timer = setTimeout(() => req.destroy(new Error(`no answer within ${timeoutMs} ms`)), timeoutMs)
    timer.unref()
    req.on('error', (err) => { clearTimeout(timer); reject(err) })
    req.end()
  })
}

function maxAgeOf (cacheControl: string | undefined): number | null {
  const m = /(?:^|[,\s])max-age=(\d{1,9})(?:$|[,\s])/i.exec(cacheControl ?? '')
  return m === null ? null : Number(m[1])
}

function reasonOf (err: unknown): string {
  const e = err as { code?: unknown, message?: unknown } | null
  if (typeof e?.code === 'string' && e.code !== 'TENANT_PROXY_ERR_KEY_INVALID') return e.code
  return err instanceof SyntaxError ? 'not JSON' : typeof e?.message === 'string' ? e.message : 'unknown error'
}
