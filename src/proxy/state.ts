/**
 * The mutable state the request path reads: the current registry index and whether the process
 * is draining. Replaced by reference, so a request sees one consistent index.
 */
import type { RegistryIndex } from '../registry/index.js'

/** Shared between server.ts (writer) and the apps (readers). */
export interface ProxyState {
  /** null until the first snapshot is loaded. */
  index: RegistryIndex | null
  draining: boolean
}

/** A fresh state: nothing loaded, not draining. */
export function createProxyState (): ProxyState {
  return { index: null, draining: false }
}
