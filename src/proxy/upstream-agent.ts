/**
 * The undici Agent the proxy forwards through, able to cancel an upstream request whose client
 * went away before the answer (nginx's default): the app stops working for nobody.
 */
import { Agent, errors, type Dispatcher } from 'undici'

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

/** An Agent that remembers the handler of each request carrying an UpstreamHook. */
export class UpstreamAgent extends Agent {
  // reply-from copies the headers object with Object.assign, which keeps symbol keys, and undici
  // reads only string keys: the hook travels with the request without becoming a header. An
  // AbortSignal per request would do the same job but costs more CPU than the rest of the proxy.
  override dispatch (options: Dispatcher.DispatchOptions, handler: Dispatcher.DispatchHandler): boolean {
    const hook = (options.headers as Record<symbol, UpstreamHook | undefined> | null | undefined)?.[kUpstreamHook]
    if (hook !== undefined) hook.handler = handler as unknown as CancellableHandler
    return super.dispatch(options, handler)
  }
}
