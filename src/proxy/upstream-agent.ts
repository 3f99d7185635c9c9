/**
 * The undici Agent the proxy forwards through. It turns a pool's stand-in origin into a real
 * address per attempt, retries on another address when nothing reached the app (any method) or
 * when an idempotent request without a body lost its connection before the answer, feeds
 * failures into passive ejection, and can cancel an upstream request whose client went away
 * (nginx's default): the app stops working for nobody.
 */
import { Agent, errors, type Dispatcher } from 'undici'
import type { UpstreamAddress, UpstreamPool, UpstreamPools } from './upstream-pools.js'

/** Symbol under which the traffic app puts a per-request hook on the upstream headers object. */
export const kUpstreamHook = Symbol('tenant-proxy.upstreamHook')

/** Filled by the agent when the request is dispatched; the traffic app calls `cancel`. */
export interface UpstreamHook {
  handler: CancellableHandler | null
}

/**
 * undici's request handler: `abort` arrives with onConnect; before that, a `reason` set on it
 * makes onConnect abort at once (undici's own signal handling does exactly this).
 */
interface CancellableHandler {
  abort?: ((reason: Error) => void) | null
  reason?: unknown
}

/** Cancels the upstream request behind `hook`, whether or not it has a connection yet. */
export function cancelUpstream (hook: UpstreamHook): void {
  const handler = hook.handler
  if (handler === null) return
  hook.handler = null
  const reason = new errors.RequestAbortedError('client closed the connection')
  if (typeof handler.abort === 'function') handler.abort(reason)
  else handler.reason = reason
}

/** undici's legacy handler interface (what Dispatcher.request hands to dispatch). */
interface LegacyHandler {
  onConnect?: (abort: (reason?: Error) => void, context?: object) => void
  onHeaders?: (statusCode: number, headers: Buffer[], resume: () => void, statusText: string) => boolean
  onData?: (chunk: Buffer) => boolean
  onComplete?: (trailers: string[] | null) => void
  onError?: (err: Error) => void
  onUpgrade?: (statusCode: number, headers: Buffer[] | string[] | null, socket: unknown) => void
  onBodySent?: (chunk: unknown) => void
  onRequestSent?: () => void
  onResponseStarted?: () => void
}

/** Errors that mean the connection failed or broke (the address is suspect), by code. */
const CONNECTION_ERRORS = new Set(['ECONNREFUSED', 'ECONNRESET', 'EPIPE', 'EHOSTUNREACH', 'ENETUNREACH', 'ENOTFOUND', 'EAI_AGAIN', 'UND_ERR_CONNECT_TIMEOUT', 'UND_ERR_SOCKET', 'UND_ERR_CLOSED'])
const REPLAYABLE_METHODS = new Set(['GET', 'HEAD', 'OPTIONS'])

function errorCode (err: Error): string {
  const e = err as Error & { code?: string, cause?: { code?: string } }
  return e.cause?.code ?? e.code ?? ''
}

/** What the agent reports about retries and failures. */
export interface AgentEvents {
  onRetry?: (pool: UpstreamPool, address: UpstreamAddress, err: Error) => void
}

/** An Agent over upstream pools (see the module comment). */
export class UpstreamAgent extends Agent {
  #pools: UpstreamPools | null = null
  #events: AgentEvents = {}

  /** Connects the agent to the pools whose virtual origins it will see. */
  usePools (pools: UpstreamPools, events: AgentEvents = {}): void {
    this.#pools = pools
    this.#events = events
  }

  // reply-from copies the headers object with Object.assign, which keeps symbol keys, and undici
  // reads only string keys: the hook travels with the request without becoming a header. An
  // AbortSignal per request would do the same job but costs more CPU than the rest of the proxy.
  override dispatch (options: Dispatcher.DispatchOptions, handler: Dispatcher.DispatchHandler): boolean {
    const hook = (options.headers as Record<symbol, UpstreamHook | undefined> | null | undefined)?.[kUpstreamHook]
    if (hook !== undefined) hook.handler = handler as unknown as CancellableHandler
    const pool = this.#pools?.byVirtualOrigin(String(options.origin))
    if (pool === undefined) return super.dispatch(options, handler)
    new PooledRequest(pool, options, handler as unknown as LegacyHandler, hook, this.#events, (o, h) => super.dispatch(o, h)).attempt(null)
    return true
  }
}

/** One request over a pool: an attempt per address until one answers or retrying is unsafe. */
class PooledRequest {
  /** Addresses tried so far; allocated only when a first attempt fails (rare). */
  #tried: Set<UpstreamAddress> | null = null
  #last: UpstreamAddress | null = null
  readonly #replayable: boolean

  constructor (
    readonly pool: UpstreamPool,
    readonly options: Dispatcher.DispatchOptions,
    readonly handler: LegacyHandler,
    readonly hook: UpstreamHook | undefined,
    readonly events: AgentEvents,
    readonly send: (options: Dispatcher.DispatchOptions, handler: LegacyHandler) => boolean
  ) {
    const body = options.body
    this.#replayable = REPLAYABLE_METHODS.has(options.method) && (body === undefined || body === null || body === '')
  }

  attempt (lastError: Error | null): void {
    if (this.#last !== null) (this.#tried ??= new Set()).add(this.#last)
    const address = this.pool.pick(this.#tried ?? undefined)
    if (address === undefined) {
      this.handler.onError?.(lastError ?? new errors.SocketError('no upstream address'))
      return
    }
    this.#last = address
    // The options object is this request's own (built per request by undici's request API):
    // pointing it at the address saves a copy per request.
    ;(this.options as { origin: string }).origin = address.origin
    this.send(this.options, new Attempt(this, address))
  }

  /** Whether a failed attempt may be repeated on another address. */
  retryable (err: Error, sent: boolean): boolean {
    if (this.hook !== undefined && this.hook.handler === null) return false // the client left
    if (!CONNECTION_ERRORS.has(errorCode(err))) return false
    // Nothing was written: any method is safe. Written: only a bodyless idempotent request.
    return !sent || this.#replayable
  }
}

/** The handler of one attempt: forwards to the request's handler, intercepting failures. */
class Attempt implements LegacyHandler {
  #sent = false
  #answered = false
  /** The address's generation when the attempt began: its outcome counts for that incident only. */
  readonly #generation: number

  constructor (readonly request: PooledRequest, readonly address: UpstreamAddress) {
    this.#generation = address.generation
  }

  onConnect (abort: (reason?: Error) => void, context?: object): void {
    this.#sent = true
    this.request.handler.onConnect?.(abort, context)
  }

  onHeaders (statusCode: number, headers: Buffer[], resume: () => void, statusText: string): boolean {
    this.#answered = true
    this.request.pool.succeeded(this.address, this.#generation)
    return this.request.handler.onHeaders?.(statusCode, headers, resume, statusText) ?? true
  }

  onData (chunk: Buffer): boolean {
    return this.request.handler.onData?.(chunk) ?? true
  }

  onComplete (trailers: string[] | null): void {
    this.request.handler.onComplete?.(trailers)
  }

  onUpgrade (statusCode: number, headers: Buffer[] | string[] | null, socket: unknown): void {
    this.#answered = true
    this.request.handler.onUpgrade?.(statusCode, headers, socket)
  }

  onBodySent (chunk: unknown): void {
    this.request.handler.onBodySent?.(chunk)
  }

  onRequestSent (): void {
    this.request.handler.onRequestSent?.()
  }

  onResponseStarted (): void {
    this.request.handler.onResponseStarted?.()
  }

  onError (err: Error): void {
    const r = this.request
    if (!this.#answered && CONNECTION_ERRORS.has(errorCode(err))) r.pool.failed(this.address, this.#generation)
    if (!this.#answered && r.retryable(err, this.#sent)) {
      r.events.onRetry?.(r.pool, this.address, err)
      r.attempt(err)
      return
    }
    r.handler.onError?.(err)
  }
}
