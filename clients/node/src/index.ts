/**
 * @tenant-proxy/verify: verifies the signed tenant database descriptor tenant-proxy adds to every
 * request (docs/descriptor.md in the tenant-proxy repository), on jose. One verifier per app
 * (`createVerifier`, or `createVerifierFromEnv` for TENANT_DESCRIPTOR_* settings), plus a Fastify
 * plugin and an Express/Connect middleware that hand the app a frozen `tenantDescriptor`. Neither
 * Fastify nor Express is a dependency: the middlewares only use what both frameworks pass them.
 */
import type { IncomingMessage, ServerResponse } from 'node:http'
import { checkHeader, checkSigned, decode, type DescriptorClaims } from './checks.js'
import { DescriptorError, VerifierConfigError } from './errors.js'
import { CachedKeySet, DEFAULT_FETCH_TIMEOUT_MS, DEFAULT_JWKS_COOLDOWN_S, fileLoader, staticKeys, urlLoader, type KeySource as LoadedKeys } from './key-set.js'
import { keysFromConfig, keysFromJwks, keysFromText, type Jwks, type KeyConfig } from './keys.js'

export { DESCRIPTOR_TYP, FORBIDDEN_HEADERS, MAX_TOKEN_BYTES, type DescriptorClaims } from './checks.js'
export { DESCRIPTOR_REASONS, DescriptorError, isDescriptorError, VerifierConfigError, type DescriptorReason } from './errors.js'
export { canonicalHost } from './host.js'
export { DEFAULT_FETCH_TIMEOUT_MS, DEFAULT_JWKS_COOLDOWN_S, DEFAULT_JWKS_MAX_AGE_S } from './key-set.js'
export type { Jwks, KeyConfig } from './keys.js'

/** The largest clock skew allowance the specification permits, in seconds. */
export const MAX_LEEWAY_S = 5
/** The header the proxy sets unless its `descriptor.header` says otherwise. */
export const DEFAULT_HEADER = 'x-tenant-descriptor'
/** Paths the middlewares do not check by default: the proxy answers `/up` itself, for any Host. */
export const DEFAULT_SKIP_PATHS: readonly string[] = Object.freeze(['/up'])

/** A verified descriptor, frozen: the tenant, the host it was issued for and its database. */
export interface TenantDescriptor {
  readonly tenant: string
  readonly host: string
  readonly db: { readonly name: string, readonly host: string, readonly port: number }
  readonly epoch: number
  readonly claims: Readonly<DescriptorClaims>
}

/**
 * Where the keys come from: the proxy's key set URL (fetched, cached, refreshed in the background),
 * a key file (a JWKS, PEM blocks or `hs256:<secret>`; read the same way), or keys given inline (a
 * JWKS object, a list of `{ kid?, alg?, key }`, or a key text). An HS256 secret is always marked
 * as one (`alg: 'HS256'` or the `hs256:` prefix).
 */
export type KeySource = { jwksUrl: string | URL } | { keysFile: string } | { keys: Jwks | readonly KeyConfig[] | string }

/** Options of createVerifier. */
export interface VerifierOptions {
  /** The proxy's `deploymentId`. */
  issuer: string
  /** This app's `descriptor.audience`. */
  audience: string
  /** Clock skew allowed on exp and nbf, 0 to 5 seconds (default 5). */
  leewayS?: number
  /** Minimum seconds between two key set loads caused by unknown kids or after a failed load (default 30). */
  jwksCooldownS?: number
  /** Key set lifetime in seconds; default: the answer's Cache-Control max-age (bounded to 1 s – 1 h), else 60. */
  jwksMaxAgeS?: number
  /** Timeout of one key set fetch, in ms (default 2000). */
  fetchTimeoutMs?: number
  /** Hears key set loads that failed in the background (the last good key set was kept). */
  onKeySetError?: (err: Error) => void
  /** Clock in ms since the epoch (tests inject one). */
  now?: () => number
}

/** Verifies descriptors for one app. */
export interface DescriptorVerifier {
  /** Verifies a header value for a request to `requestHost` (the Host header, port allowed); rejects with a DescriptorError. */
  verify (headerValue: string | readonly string[] | undefined | null, requestHost: string | undefined | null): Promise<TenantDescriptor>
  /**
   * Reads the settings and loads the key set now, so the first request does not wait for it and a
   * mistake shows at start: rejects with a VerifierConfigError, or a DescriptorError `jwks_unavailable`.
   */
  prefetch (): Promise<void>
  /**
   * Resolves once no key set load is in flight. A refresh runs in the background and the request
   * that started it does not wait; tests (and a graceful start) can wait here for it.
   */
  settled (): Promise<void>
  /** How many times the key set was fetched or read (key set URL or file), successful or not. */
  readonly jwksFetches: number
}

/** Creates a verifier; throws a VerifierConfigError for bad options or keys. */
export function createVerifier (source: KeySource, options: VerifierOptions): DescriptorVerifier {
  const { issuer, audience } = options
  if (typeof issuer !== 'string' || issuer === '' || typeof audience !== 'string' || audience === '') {
    throw config('createVerifier: issuer and audience are required (the proxy\'s deploymentId and descriptor.audience)')
  }
  const leewayS = options.leewayS ?? MAX_LEEWAY_S
  // More leeway would keep a captured descriptor usable after the proxy stopped vouching for it.
  if (!(typeof leewayS === 'number' && leewayS >= 0 && leewayS <= MAX_LEEWAY_S)) throw config(`createVerifier: leewayS must be between 0 and ${MAX_LEEWAY_S}, got ${String(leewayS)}`)
  const now = options.now ?? Date.now
  const keys = keySourceFor(source, options, now)
  return {
    async verify (headerValue, requestHost) {
      if (headerValue === undefined || headerValue === null) throw new DescriptorError('missing', 'no descriptor header')
      // Node hands a repeated header over joined with ", " (or as a list): both end as a comma.
      const token = typeof headerValue === 'string' ? headerValue : headerValue.join(', ')
      const decoded = decode(token)
      const kid = checkHeader(decoded.header)
      const key = await keys.get(kid)
      if (key === undefined) throw new DescriptorError('unknown_kid', 'unknown kid')
      const claims = await checkSigned(decoded, key, { issuer, audience, leewayS, nowMs: now(), requestHost: requestHost ?? '' })
      return freezeDescriptor(claims)
    },
    prefetch: async () => await keys.prefetch(),
    settled: async () => await keys.settled(),
    get jwksFetches () {
      return keys.fetches
    }
  }
}

/**
 * A verifier configured from the app's environment, read at first use (the first `verify` or
 * `prefetch`), never when it is created, so build steps and consoles run without the settings:
 *
 *   TENANT_DESCRIPTOR_ISSUER     the proxy's deploymentId
 *   TENANT_DESCRIPTOR_AUDIENCE   this app's descriptor.audience
 *   TENANT_DESCRIPTOR_JWKS_URL   the proxy's key set, e.g. http://tenant-proxy:9394/.well-known/tenant-proxy/jwks.json
 *   TENANT_DESCRIPTOR_KEYS_FILE  or a key file (JWKS, PEM, hs256:<secret>) instead of the URL
 *
 * `TENANT_PROXY_*` belongs to the proxy, which refuses variables it does not know: an app that
 * shares the proxy's environment must not use that prefix. A missing or invalid setting makes
 * `verify` reject with a VerifierConfigError naming the variable (the middlewares pass it on as an
 * error, a 500), never with a refusal.
 */
export function createVerifierFromEnv (env: Record<string, string | undefined> = process.env, options: Partial<VerifierOptions> = {}): DescriptorVerifier {
  let verifier: DescriptorVerifier | null = null
  const get = (): DescriptorVerifier => {
    verifier ??= fromEnv(env, options)
    return verifier
  }
  return {
    verify: async (headerValue, requestHost) => await get().verify(headerValue, requestHost),
    prefetch: async () => await get().prefetch(),
    settled: async () => await verifier?.settled(),
    get jwksFetches () {
      return verifier?.jwksFetches ?? 0
    }
  }
}

function fromEnv (env: Record<string, string | undefined>, options: Partial<VerifierOptions>): DescriptorVerifier {
  const read = (name: string): string | undefined => {
    const v = env[name]?.trim()
    return v === undefined || v === '' ? undefined : v
  }
  const issuer = options.issuer ?? read('TENANT_DESCRIPTOR_ISSUER')
  const audience = options.audience ?? read('TENANT_DESCRIPTOR_AUDIENCE')
  const url = read('TENANT_DESCRIPTOR_JWKS_URL')
  const file = read('TENANT_DESCRIPTOR_KEYS_FILE')
  const missing = [issuer === undefined ? 'TENANT_DESCRIPTOR_ISSUER' : null, audience === undefined ? 'TENANT_DESCRIPTOR_AUDIENCE' : null, url === undefined && file === undefined ? 'TENANT_DESCRIPTOR_JWKS_URL (or TENANT_DESCRIPTOR_KEYS_FILE)' : null].filter((x) => x !== null)
  if (missing.length > 0) throw config(`descriptor verifier: ${missing.join(', ')} ${missing.length === 1 ? 'is' : 'are'} not set`)
  if (url !== undefined && file !== undefined) throw config('descriptor verifier: set TENANT_DESCRIPTOR_JWKS_URL or TENANT_DESCRIPTOR_KEYS_FILE, not both')
  let source: KeySource
  if (url !== undefined) {
    try {
      source = { jwksUrl: new URL(url) }
    } catch {
      throw config('descriptor verifier: TENANT_DESCRIPTOR_JWKS_URL is not a URL')
    }
  } else {
    source = { keysFile: file ?? '' }
  }
  return createVerifier(source, { ...options, issuer: issuer ?? '', audience: audience ?? '' })
}

/** Options of the Fastify plugin and the Connect middleware. */
export interface MiddlewareOptions {
  verifier: DescriptorVerifier
  /** The descriptor header (default x-tenant-descriptor; the proxy's `descriptor.header`). */
  header?: string
  /** Paths served without a descriptor, compared exactly with the path of the request target (default ['/up']). */
  skipPaths?: readonly string[]
  /**
   * The request host to compare with the `host` claim. Default: the Host header, which is what the
   * proxy signed for; not a host a framework derives from X-Forwarded-Host or Forwarded.
   */
  host?: (req: IncomingMessage) => string | undefined
  /** Called with each refusal (for logging: log `err.reason`, never the token). */
  onRefused?: (err: DescriptorError, req: IncomingMessage) => void
}

/** What a middleware answers a refused descriptor with: status and JSON body (the reason code, never the token). */
export function refusalOf (err: DescriptorError): { status: 400 | 401 | 503, body: string } {
  const status = err.httpStatus
  const error = status === 400 ? 'tenant descriptor missing or malformed' : status === 503 ? 'tenant descriptor keys unavailable' : 'tenant descriptor rejected'
  return { status, body: JSON.stringify({ error, reason: err.reason }) }
}

/** The parts of a Fastify instance the plugin uses (Fastify itself is not a dependency). */
export interface FastifyLike {
  decorateRequest (name: 'tenantDescriptor', value: null): unknown
  addHook (name: 'onRequest', hook: (request: { raw: IncomingMessage, tenantDescriptor?: TenantDescriptor | null }, reply: FastifyReplyLike) => Promise<unknown>): unknown
}

/** The parts of a Fastify reply the plugin uses. */
export interface FastifyReplyLike {
  code (status: number): FastifyReplyLike
  header (name: string, value: string): FastifyReplyLike
  type (contentType: string): FastifyReplyLike
  send (body: string): unknown
}

/**
 * Fastify plugin: verifies every request's descriptor in an onRequest hook and sets
 * `request.tenantDescriptor`, or answers 400/401/503 JSON `{ error, reason }`.
 *   app.register(fastifyTenantDescriptor, { verifier })
 * Import it from '@tenant-proxy/verify/fastify' to get `request.tenantDescriptor` typed.
 */
export function fastifyTenantDescriptor (app: FastifyLike, opts: MiddlewareOptions, done: (err?: Error) => void): void {
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
 * 400/401/503 JSON `{ error, reason }` without calling next. Other errors (a VerifierConfigError)
 * go to next(err).
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

function keySourceFor (source: KeySource, options: VerifierOptions, now: () => number): LoadedKeys {
  const cooldownS = options.jwksCooldownS ?? DEFAULT_JWKS_COOLDOWN_S
  if (!(typeof cooldownS === 'number' && cooldownS >= 0)) throw config(`createVerifier: jwksCooldownS must be 0 or more, got ${String(cooldownS)}`)
  const maxAgeS = options.jwksMaxAgeS
  if (maxAgeS !== undefined && !(typeof maxAgeS === 'number' && maxAgeS > 0)) throw config(`createVerifier: jwksMaxAgeS must be more than 0, got ${String(maxAgeS)}`)
  const timeoutMs = options.fetchTimeoutMs ?? DEFAULT_FETCH_TIMEOUT_MS
  if (!(typeof timeoutMs === 'number' && timeoutMs > 0)) throw config(`createVerifier: fetchTimeoutMs must be more than 0, got ${String(timeoutMs)}`)
  const cache = { now, cooldownS, maxAgeS, onError: options.onKeySetError }
  if ('keys' in source) {
    const k = source.keys
    return staticKeys(typeof k === 'string' ? keysFromText(k, 'createVerifier keys') : Array.isArray(k) ? keysFromConfig(k as readonly KeyConfig[]) : keysFromJwks(k))
  }
  if ('jwksUrl' in source) {
    let url: URL
    try {
      url = new URL(source.jwksUrl)
    } catch {
      throw config('createVerifier: jwksUrl is not a URL')
    }
    if (url.protocol !== 'http:' && url.protocol !== 'https:') throw config(`createVerifier: jwksUrl must be http(s), got ${url.protocol}`)
    return new CachedKeySet(urlLoader(url, timeoutMs), { ...cache, where: `${url.protocol}//${url.host}${url.pathname}` })
  }
  const file = 'keysFile' in source ? source.keysFile : undefined
  if (typeof file === 'string' && file !== '') return new CachedKeySet(fileLoader(file), { ...cache, where: file })
  throw config('createVerifier: give { jwksUrl }, { keysFile } or { keys }')
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

function config (message: string): VerifierConfigError {
  return new VerifierConfigError('TENANT_PROXY_ERR_CONFIG_INVALID', message)
}
