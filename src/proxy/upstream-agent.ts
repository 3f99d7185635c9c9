/**
 * The undici Agent the proxy forwards through, able to cancel an upstream request whose client
 * went away before the answer (nginx's default): the app stops working for nobody.
 */
import { Agent, type Dispatcher } from 'undici'

/** Symbol under which the traffic app puts a per-request hook on the upstream headers object. */
export const kUpstreamHook = Symbol('tenant-proxy.upstreamHook')

/** Set by the agent, called by the traffic app when the client disconnects. */
export interface UpstreamHook {
  abort: (() => void) | null
}

type HeadersWithHook = Record<string | symbol, unknown> & { [kUpstreamHook]?: UpstreamHook }

/** An Agent whose requests can be aborted through the hook found on their headers. */
export class UpstreamAgent extends Agent {
  // reply-from copies the headers object with Object.assign, which keeps symbol keys, and undici
  // reads only string keys: the hook travels with the request without becoming a header.
  // One untyped implementation behind Dispatcher's typed overloads: only the callback form is
  // intercepted (reply-from's), the promise form passes through unchanged.
  override request (...args: unknown[]): never {
    const [options, callback] = args as [Dispatcher.RequestOptions & { headers?: HeadersWithHook }, ((err: Error | null, data: Dispatcher.ResponseData) => void) | undefined]
    const hook = options.headers?.[kUpstreamHook]
    if (hook === undefined || typeof callback !== 'function') return (super.request as (...a: unknown[]) => never)(...args)
    const controller = new AbortController()
    hook.abort = () => controller.abort()
    super.request({ ...options, signal: controller.signal }, (err, data) => {
      // Once the answer has started, stream teardown (not this hook) cancels the body.
      hook.abort = null
      callback(err, data)
    })
    return undefined as never
  }
}
