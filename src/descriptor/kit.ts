/**
 * tenant-proxy/verify: the Node verifier kit for apps behind tenant-proxy. One verifier per app
 * (`createVerifier`) with a key set from a JWKS URL, a JWKS file or keys given inline, plus a
 * Fastify plugin and an Express/Connect middleware that verify every request's descriptor and
 * hand the app a frozen `tenantDescriptor`. The checks are those of src/descriptor/verify.ts
 * (docs/descriptor.md), with the same reason codes as the Ruby and Python verifiers.
 */
import { readFile } from 'node:fs/promises'
import { request as httpRequest, type IncomingMessage, type ServerResponse } from 'node:http'
import { request as httpsRequest } from 'node:https'
import type { FastifyPluginCallback } from 'fastify'
import { tpError } from '../errors.js'
import { keysFromText } from './key-text.js'
import { keysFromConfig, type KeyConfig, type VerificationKey } from './keyring.js'
import type { DescriptorClaims } from './sign.js'
import { checkHeader, checkSigned, decodeDescriptor, DescriptorError, keysFromJwks } from './verify.js'

export { DESCRIPTOR_REASONS, DescriptorError, FORBIDDEN_HEADERS, isDescriptorError, MAX_TOKEN_BYTES, type DescriptorReason } from './verify.js'
export type { DescriptorClaims } from './sign.js'
export type { KeyConfig } from './keyring.js'

/** The largest clock skew allowance the specification permits, in seconds. */
export const MAX_LEEWAY_S = 5
/** The header the proxy sets unless `descriptor.header` says otherwise. */
export const DEFAULT_HEADER = 'x-tenant-descriptor'
/** Paths the middlewares do not check by default: the proxy answers `/up` itself, for any Host. */
export const DEFAULT_SKIP_PATHS: readonly string[] = Object.freeze(['/up'])
/** Default minimum time between two refetches of the key set caused by unknown kids, in seconds. */
export const DEFAULT_JWKS_COOLDOWN_S = 30
/** Key set lifetime when the answer has no `Cache-Control: max-age`, in seconds. */
export const DEFAULT_JWKS_MAX_AGE_S = 60

/** A verified descriptor, frozen: the tenant, the host it was issued for and its database. */
export interface TenantDescriptor {
  readonly tenant: string
  readonly host: string
  readonly db: { readonly name: string, readonly host: string, readonly port: number }
  readonly epoch: number
  readonly claims: Readonly<DescriptorClaims>
}

/** A JWKS document, as served at /.well-known/tenant-proxy/jwks.json. */
export interface Jwks { keys: unknown[] }

/**
 * Where the keys come from: the proxy's JWKS URL (fetched, cached, refetched on rotation), a JWKS
 * file (read the same way), or keys given inline (a JWKS object, a list of PEM keys and HS256
 * secrets as in `descriptor.keys`, or a key text as in TENANT_PROXY_DESCRIPTOR_KEYS: PEM blocks
 * or `hs256:<secret>`). An HS256 secret is always marked as one (`alg: 'HS256'` or the prefix).
 */
export type KeySource = { jwksUrl: string | URL } | { jwksFile: string } | { keys: Jwks | readonly KeyConfig[] | string }

/** Options of createVerifier. */
export interface VerifierOptions {
  /** The proxy's `deploymentId`. */
  issuer: string
  /** This app's `descriptor.audience`. */
  audience: string
  /** Clock skew allowed on exp and nbf, 0 to 5 seconds (default 5). */
  leewayS?: number
  /** Minimum seconds between two key set refetches caused by unknown kids (default 30). */
  jwksCooldownS?: number
  /** Key set lifetime in seconds; default: the answer's Cache-Control max-age, else 60. */
  jwksMaxAgeS?: number
  /** Timeout of one key set fetch, in ms (default 2000). */
  fetchTimeoutMs?: number
  /** Clock in ms since the epoch (tests inject one). */
  now?: () => number
}

/** Verifies descriptors for one app. */
export interface DescriptorVerifier {
  /** Verifies a header value for a request to `requestHost` (the Host header, port allowed); rejects with a DescriptorError. */
  verify (headerValue: string | readonly string[] | undefined | null, requestHost: string | undefined | null): Promise<TenantDescriptor>
  /** How many times the key set was fetched or read (JWKS URL or file), successful or not. */
  readonly jwksFetches: number
}

/** Creates a verifier; throws TENANT_PROXY_ERR_CONFIG_INVALID or TENANT_PROXY_ERR_KEY_INVALID for bad options. */
export function createVerifier (source: KeySource, options: VerifierOptions): DescriptorVerifier {
  const { issuer, audience } = options
  if (typeof issuer !== 'string' || issuer === '' || typeof audience !== 'string' || audience === '') {
    throw tpError('TENANT_PROXY_ERR_CONFIG_INVALID', ['createVerifier: issuer and audience are required (the proxy\'s deploymentId and descriptor.audience)'])
  }
  const leewayS = options.leewayS ?? MAX_LEEWAY_S
  // More leeway would keep a captured descriptor usable after the proxy stopped vouching for it.
  if (!(typeof leewayS === 'number' && leewayS >= 0 && leewayS <= MAX_LEEWAY_S)) {
    throw tpError('TENANT_PROXY_ERR_CONFIG_INVALID', [`createVerifier: leewayS must be between 0 and ${MAX_LEEWAY_S}, got ${String(leewayS)}`])
  }
  const now = options.now ?? Date.now
  const keySet = keySetFor(source, options, now)
  return {
    async verify (headerValue, requestHost) {
      if (headerValue === undefined || headerValue === null) throw new DescriptorError('missing', 'no descriptor header')
      // Node hands a repeated header over joined with ", " (or as a list): both end as a comma.
      const token = typeof headerValue === 'string' ? headerValue : headerValue.join(', ')
      const decoded = decodeDescriptor(token)
      checkHeader(decoded.header)
      const kid = decoded.header.kid as string
      const entry = await keySet.get(kid)
      if (entry === undefined) throw new DescriptorError('unknown_kid', `unknown kid ${JSON.stringify(kid)}`)
      const claims = checkSigned(decoded, entry, { issuer, audience, leewayS, now, requestHost: requestHost ?? '' })
      return freezeDescriptor(claims)
    },
    get jwksFetches () {
      return keySet.fetches
    }
  }
}

/** Options of the Fastify plugin and the Connect middleware. */
export interface MiddlewareOptions {
  verifier: DescriptorVerifier
  /** The descriptor header (default x-tenant-descriptor; the proxy's `descriptor.header`). */
  header?: string
  /** Paths served without a descriptor, compared exactly with the path of the request target (default ['/up']). */
  skipPaths?: readonly string[]
  /** The request host to compare with the `host` claim (default: the Host header). */
  host?: (req: IncomingMessage) => string | undefined
  /** Called with each refusal (for logging: log `err.reason`, never the token). */
  onRefused?: (err: DescriptorError, req: IncomingMessage) => void
}

/** What a middleware answers with for a refused descriptor: status and JSON body (the reason code, never the token). */
export function refusalOf (err: DescriptorError): { status: 400 | 401 | 503, body: string } {
  const status = err.httpStatus
  const error = status === 400 ? 'tenant descriptor missing or malformed' : status === 503 ? 'tenant descriptor keys unavailable' : 'tenant descriptor rejected'
  return { status, body: JSON.stringify({ error, reason: err.reason }) }
}

declare module 'fastify' {
  interface FastifyRequest {
    /** The verified descriptor (null on skipped paths). */
    tenantDescriptor: TenantDescriptor | null
  }
}

/**
 * Fastify plugin: verifies every request's descriptor in an onRequest hook and sets
 * `request.tenantDescriptor`, or answers 400/401/503 JSON `{ error, reason }`.
 *   app.register(fastifyTenantDescriptor, { verifier })
 */
export const fastifyTenantDescriptor: FastifyPluginCallback<MiddlewareOptions> = (app, opts, done) => {
  const check = requestChecker(opts)
  app.decorateRequest('tenantDescriptor', null)
  app.addHook('onRequest', async (request, reply) => {
    const result = await check(request.raw)
    if (result === null) return
    if (!(result instanceof DescriptorError)) {
      request.tenantDescriptor = result
      return
    }
    const { status, body } = refusalOf(result)
    return await reply.code(status).header('cache-control', 'no-store').type('application/json; charset=utf-8').send(body)
  })
  done()
}
// What fastify-plugin does: the hook and decorator apply to the app that registers the plugin,
// not to a child scope of their own (otherwise the routes beside it would go unchecked).
Object.assign(fastifyTenantDescriptor, { [Symbol.for('skip-override')]: true, [Symbol.for('fastify.display-name')]: 'tenant-proxy-descriptor' })

/** A Node request as the Connect middleware leaves it. */
export type RequestWithDescriptor = IncomingMessage & { tenantDescriptor?: TenantDescriptor | null, originalUrl?: string }

/**
 * Express/Connect middleware: verifies the descriptor and sets `req.tenantDescriptor`, or answers
 * 400/401/503 JSON `{ error, reason }` without calling next.
 *   app.use(tenantDescriptorMiddleware({ verifier }))
 */
export function tenantDescriptorMiddleware (opts: MiddlewareOptions): (req: RequestWithDescriptor, res: ServerResponse, next: (err?: unknown) => void) => void {
  const check = requestChecker(opts)
  return (req, res, next) => {
    check(req).then((result) => {
      if (result === null) {
        req.tenantDescriptor = null
        next()
        return
      }
      if (!(result instanceof DescriptorError)) {
        req.tenantDescriptor = result
        next()
        return
      }
      const { status, body } = refusalOf(result)
      res.writeHead(status, { 'content-type': 'application/json; charset=utf-8', 'content-length': Buffer.byteLength(body), 'cache-control': 'no-store' })
      res.end(body)
    }, next)
  }
}

/** The shared per-request work: null for a skipped path, the descriptor, or the refusal. */
function requestChecker (opts: MiddlewareOptions): (req: RequestWithDescriptor) => Promise<TenantDescriptor | DescriptorError | null> {
  const header = (opts.header ?? DEFAULT_HEADER).toLowerCase()
  const skip = new Set(opts.skipPaths ?? DEFAULT_SKIP_PATHS)
  const hostOf = opts.host ?? ((req: IncomingMessage) => req.headers.host)
  return async (req) => {
    if (skip.size > 0) {
      const target = req.originalUrl ?? req.url ?? ''
      const q = target.indexOf('?')
      if (skip.has(q === -1 ? target : target.slice(0, q))) return null
    }
    try {
      return await opts.verifier.verify(req.headers[header], hostOf(req))
    } catch (err) {
      if (!(err instanceof DescriptorError)) throw err
      opts.onRefused?.(err, req)
      return err
    }
  }
}

function freezeDescriptor (claims: DescriptorClaims): TenantDescriptor {
  const db = Object.freeze({ name: claims.db.name, host: claims.db.host, port: claims.db.port })
  // The claims object came from JSON.parse and nobody else holds it: freeze it deeply in place.
  return Object.freeze({ tenant: claims.sub, host: claims.host, db, epoch: claims.epoch, claims: deepFreeze(claims) })
}

function deepFreeze<T> (value: T): T {
  if (typeof value === 'object' && value !== null) {
    for (const v of Object.values(value)) deepFreeze(v)
    Object.freeze(value)
  }
  return value
}

/** A source of verification keys by kid. */
interface KeySet {
  get (kid: string): Promise<VerificationKey | undefined>
  readonly fetches: number
}

/** Loads a key set once: its keys and, for a URL, the max-age its answer allowed. */
type KeyLoader = () => Promise<{ keys: Map<string, VerificationKey>, maxAgeS: number | null }>

function keySetFor (source: KeySource, options: VerifierOptions, now: () => number): KeySet {
  const cooldownS = options.jwksCooldownS ?? DEFAULT_JWKS_COOLDOWN_S
  if (!(cooldownS >= 0)) throw tpError('TENANT_PROXY_ERR_CONFIG_INVALID', [`createVerifier: jwksCooldownS must be 0 or more, got ${String(cooldownS)}`])
  const maxAgeS = options.jwksMaxAgeS
  if (maxAgeS !== undefined && !(maxAgeS > 0)) throw tpError('TENANT_PROXY_ERR_CONFIG_INVALID', [`createVerifier: jwksMaxAgeS must be more than 0, got ${String(maxAgeS)}`])
  if ('keys' in source) {
    const keys = staticKeys(source.keys)
    return { get: async (kid) => keys.get(kid), fetches: 0 }
  }
  if ('jwksUrl' in source) {
    const url = new URL(source.jwksUrl)
    if (url.protocol !== 'http:' && url.protocol !== 'https:') throw tpError('TENANT_PROXY_ERR_CONFIG_INVALID', [`createVerifier: jwksUrl must be http(s), got ${url.protocol}`])
    const timeoutMs = options.fetchTimeoutMs ?? 2000
    return new CachedKeySet(async () => {
      const { body, maxAgeS: served } = await fetchJson(url, timeoutMs)
      return { keys: keysFromJwks(JSON.parse(body) as { keys?: unknown }), maxAgeS: served }
    }, describeUrl(url), now, cooldownS, maxAgeS)
  }
  if ('jwksFile' in source) {
    const file = source.jwksFile
    return new CachedKeySet(async () => ({ keys: keysFromJwks(JSON.parse(await readFile(file, 'utf8')) as { keys?: unknown }), maxAgeS: null }), file, now, cooldownS, maxAgeS)
  }
  throw tpError('TENANT_PROXY_ERR_CONFIG_INVALID', ['createVerifier: give { jwksUrl }, { jwksFile } or { keys }'])
}

function staticKeys (keys: Jwks | readonly KeyConfig[] | string): Map<string, VerificationKey> {
  if (typeof keys === 'string') return keysFromConfig(keysFromText(keys, 'createVerifier keys'), 'createVerifier keys')
  if (Array.isArray(keys)) return keysFromConfig(keys)
  return keysFromJwks(keys)
}

/**
 * A fetched key set: loaded on first use, again once its max-age has passed, and on an unknown
 * kid at most once per cooldown (so a flood of forged kids cannot make the app hammer the proxy).
 * A failed refetch keeps the last good keys; with none, verification fails with jwks_unavailable.
 */
class CachedKeySet implements KeySet {
  fetches = 0
  #keys: Map<string, VerificationKey> | null = null
  /** When the keys expire (max-age after a fetch), or when to retry after a failed refetch (cooldown). */
  #refreshAt = 0
  #attemptedAt: number | null = null
  #inflight: Promise<void> | null = null

  constructor (
    private readonly load: KeyLoader,
    private readonly where: string,
    private readonly now: () => number,
    private readonly cooldownS: number,
    private readonly maxAgeOverrideS: number | undefined
  ) {}

  async get (kid: string): Promise<VerificationKey | undefined> {
    if (this.#keys === null || this.now() >= this.#refreshAt) await this.#refresh()
    const keys = this.#keys
    if (keys === null) throw new DescriptorError('jwks_unavailable', `no key set from ${this.where}`)
    const key = keys.get(kid)
    if (key !== undefined) return key
    // An unknown kid may be the next key of a rotation: look once, then not again for cooldownS.
    if (this.#attemptedAt === null || this.now() - this.#attemptedAt < this.cooldownS * 1000) return undefined
    await this.#refresh()
    return this.#keys?.get(kid)
  }

  /** One load at a time: concurrent requests share it. Failures are kept quiet while old keys remain. */
  async #refresh (): Promise<void> {
    this.#inflight ??= this.#load().finally(() => { this.#inflight = null })
    try {
      await this.#inflight
    } catch (err) {
      // Keep serving the last good keys, and do not retry a failing server more than once per cooldown.
      this.#refreshAt = (this.#attemptedAt ?? this.now()) + this.cooldownS * 1000
      if (this.#keys === null) throw new DescriptorError('jwks_unavailable', `cannot load the key set from ${this.where}: ${reasonOf(err)}`, err)
    }
  }

  async #load (): Promise<void> {
    const at = this.now()
    this.#attemptedAt = at
    this.fetches++
    const { keys, maxAgeS } = await this.load()
    this.#keys = keys
    // Bounded both ways: max-age=0 must not mean a fetch per request, nor a huge value never.
    const age = this.maxAgeOverrideS ?? Math.min(Math.max(maxAgeS ?? DEFAULT_JWKS_MAX_AGE_S, 1), 3600)
    this.#refreshAt = at + age * 1000
  }
}

/** GET with a timeout, no redirects (a key set URL that redirects is misconfigured or hijacked) and a 1 MiB cap. */
async function fetchJson (url: URL, timeoutMs: number): Promise<{ body: string, maxAgeS: number | null }> {
  const request = url.protocol === 'https:' ? httpsRequest : httpRequest
  return await new Promise((resolve, reject) => {
    // agent: false: one connection per fetch, closed after it, so a verifier never keeps a process alive.
    const req = request(url, { method: 'GET', agent: false, headers: { accept: 'application/json' }, timeout: timeoutMs }, (res) => {
      const status = res.statusCode ?? 0
      if (status < 200 || status > 299) {
        res.resume()
        reject(new Error(`HTTP ${status}`))
        return
      }
      const chunks: Buffer[] = []
      let size = 0
      res.on('data', (c: Buffer) => {
        size += c.length
        if (size > 1 << 20) req.destroy(new Error('key set larger than 1 MiB'))
        else chunks.push(c)
      })
      res.on('end', () => resolve({ body: Buffer.concat(chunks).toString('utf8'), maxAgeS: maxAgeOf(res.headers['cache-control']) }))
      res.on('error', reject)
    })
    req.on('timeout', () => req.destroy(new Error(`no answer within ${timeoutMs} ms`)))
    req.on('error', reject)
    req.end()
  })
}

function maxAgeOf (cacheControl: string | undefined): number | null {
  const m = /(?:^|[,\s])max-age=(\d{1,9})(?:$|[,\s])/i.exec(cacheControl ?? '')
  return m === null ? null : Number(m[1])
}

/** The URL without userinfo or query, for messages. */
function describeUrl (url: URL): string {
  return `${url.protocol}//${url.host}${url.pathname}`
}

function reasonOf (err: unknown): string {
  const e = err as { code?: unknown, message?: unknown }
  if (typeof e?.code === 'string') return e.code
  return err instanceof SyntaxError ? 'not JSON' : typeof e?.message === 'string' ? e.message : 'unknown error'
}
