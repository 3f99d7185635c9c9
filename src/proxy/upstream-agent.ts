/**
 * The undici Agent the proxy forwards through. `forward(pool, …)` picks a real address per
 * attempt, retries on another address when nothing reached the app (any method) or when an
 * idempotent request without a body lost its connection before the answer, feeds failures into
 * passive ejection, and can be cancelled when the client goes away (nginx's default): the app
 * stops working for nobody. Retrying is composed around the handler, undici's retry interceptor
 * style (lib/interceptor/retry.js), not a subclass of undici's request machinery.
 */
import { Agent, errors, type Dispatcher } from 'undici'
import { classifyUpstreamError, type UpstreamFailure } from './upstream-errors.js'
import type { UpstreamAddress, UpstreamPool } from './upstream-pools.js'

/** undici's handler interface as its core calls it (undici 7 lib/core/request.js). */
export interface UpstreamHandler {
  onConnect (abort: (reason?: Error) => void, context?: object): void
  onHeaders (statusCode: number, headers: Buffer[], resume: () => void, statusText: string): boolean
  onData (chunk: Buffer): boolean
  onComplete (trailers: string[] | null): void
  onError (err: Error): void
  onUpgrade?: (statusCode: number, headers: Buffer[] | string[] | null, socket: unknown) => void
}

/** The request to forward: undici's dispatch options without the origin (the pool picks it). */
export type ForwardOptions = Omit<Dispatcher.DispatchOptions, 'origin'> & { origin?: string }

/** What the agent reports about retries. */
export interface AgentEvents {
  onRetry?: (pool: UpstreamPool, address: UpstreamAddress, failure: UpstreamFailure) => void
}

/** One forwarded request, to cancel it when its client leaves. */
export interface ForwardedRequest {
  /** Aborts the request (now, or as soon as undici connects it); no retry follows. */
  cancel (): void
}

const REPLAYABLE_METHODS = new Set(['GET', 'HEAD', 'OPTIONS'])

/** An Agent over upstream pools (see the module comment). */
export class UpstreamAgent extends Agent {
  #events: AgentEvents = {}

  /** Sets where retries are reported. */
  useEvents (events: AgentEvents): void {
    this.#events = events
  }

  /** Sends `options` to an address of `pool`, with retries; `handler` sees one attempt's answer. */
  forward (pool: UpstreamPool, options: ForwardOptions, handler: UpstreamHandler): ForwardedRequest {
    const request = new PooledRequest(pool, options, handler, this.#events, (o, h) => this.dispatch(o, h))
    request.attempt(null)
    return request
  }
}

/** One request over a pool: an attempt per address until one answers or retrying is unsafe. */
class PooledRequest implements ForwardedRequest {
  /** Addresses tried so far; allocated only when a first attempt fails (rare). */
  #tried: Set<UpstreamAddress> | null = null
  #last: UpstreamAddress | null = null
  #abort: ((reason?: Error) => void) | null = null
  #cancelled = false
  readonly #replayable: boolean

  constructor (
    readonly pool: UpstreamPool,
    readonly options: ForwardOptions,
    readonly handler: UpstreamHandler,
    readonly events: AgentEvents,
    readonly send: (options: Dispatcher.DispatchOptions, handler: UpstreamHandler) => boolean
  ) {
    const body = options.body
    this.#replayable = REPLAYABLE_METHODS.has(options.method) && (body === undefined || body === null || body === '')
  }

  cancel (): void {
    if (this.#cancelled) return
    this.#cancelled = true
    this.#abort?.(new errors.RequestAbortedError('client closed the connection'))
  }

  attempt (lastError: Error | null): void {
    if (this.#last !== null) (this.#tried ??= new Set()).add(this.#last)
    const address = this.pool.pick(this.#tried ?? undefined)
    if (address === undefined) {
      this.handler.onError(lastError ?? new errors.SocketError('no upstream address'))
      return
    }
    this.#last = address
    this.#abort = null
    // The options object is this request's own: pointing it at the address saves a copy.
    this.options.origin = address.origin
    this.send(this.options, new Attempt(this, address))
  }

  /** An attempt got its abort function: keep it, and use it at once if the client already left. */
  connected (abort: (reason?: Error) => void): boolean {
    this.#abort = abort
    if (this.#cancelled) abort(new errors.RequestAbortedError('client closed the connection'))
    return !this.#cancelled
  }

  /** Whether a failed attempt may be repeated on another address. */
  retryable (failure: UpstreamFailure, sent: boolean): boolean {
    if (this.#cancelled || !failure.connection) return false
    // Nothing was written: any method is safe. Written: only a bodyless idempotent request.
    return !sent || this.#replayable
  }
}

/** The handler of one attempt: forwards to the request's handler, intercepting failures. */
class Attempt implements UpstreamHandler {
  #sent = false
  #answered = false
  /** The address's generation when the attempt began: its outcome counts for that incident only. */
  readonly #generation: number

  constructor (readonly request: PooledRequest, readonly address: UpstreamAddress) {
    this.#generation = address.generation
  }

  onConnect (abort: (reason?: Error) => void, context?: object): void {
    this.#sent = true
    if (this.request.connected(abort)) this.request.handler.onConnect(abort, context)
  }

  onHeaders (statusCode: number, headers: Buffer[], resume: () => void, statusText: string): boolean {
    this.#answered = true
    this.request.pool.succeeded(this.address, this.#generation)
    return this.request.handler.onHeaders(statusCode, headers, resume, statusText)
  }

  onData (chunk: Buffer): boolean {
    return this.request.handler.onData(chunk)
  }

  onComplete (trailers: string[] | null): void {
    this.request.handler.onComplete(trailers)
  }

  onUpgrade (statusCode: number, headers: Buffer[] | string[] | null, socket: unknown): void {
    this.#answered = true
    this.request.handler.onUpgrade?.(statusCode, headers, socket)
  }

  onError (err: Error): void {
    const r = this.request
    if (!this.#answered) {
      const failure = classifyUpstreamError(err)
      if (failure.connection) r.pool.failed(this.address, this.#generation)
      if (r.retryable(failure, this.#sent)) {
        r.events.onRetry?.(r.pool, this.address, failure)
        r.attempt(err)
        return
      }
    }
    r.handler.onError(err)
  }
}
