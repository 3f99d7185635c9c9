/**
 * Polling with a deadline: for states that arrive asynchronously in another process or over the
 * network (a registry change reaching a proxy). Never a fixed sleep standing in for an event.
 */
import { setTimeout as delay } from 'node:timers/promises'

/** Resolves with the first non-undefined value of `probe`, or rejects naming `what` at the deadline. */
export async function until<T> (probe: () => Promise<T | undefined> | T | undefined, what: string, timeoutMs = 10_000): Promise<T> {
  const deadline = Date.now() + timeoutMs
  for (let pause = 2; ; pause = Math.min(pause * 2, 50)) {
    const value = await probe()
    if (value !== undefined) return value
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`)
    await delay(pause)
  }
}
