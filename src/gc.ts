/**
 * A full garbage collection on demand, for the moments the proxy knows it just dropped a lot:
 * after a full registry load (rows, result buffers and the previous index, over 100 MB at a
 * million tenants). Left to itself V8 keeps that heap resident until allocation pressure builds,
 * which in an idle sidecar can be never. Node exposes gc() only behind --expose-gc; the flag can
 * be turned on at run time and gc() taken from a fresh context.
 */
import { setFlagsFromString } from 'node:v8'
import { runInNewContext } from 'node:vm'

let gc: (() => void) | null | undefined

/** Runs a full, synchronous garbage collection; false when the runtime does not allow it. */
export function collectGarbage (): boolean {
  if (gc === undefined) {
    try {
      setFlagsFromString('--expose-gc')
      gc = runInNewContext('gc') as () => void
    } catch {
      gc = null
    }
  }
  if (gc === null) return false
  // No options: V8 11 (Node 20) treats gc({ type: 'major' }) as something less than a full collection.
  gc()
  return true
}

