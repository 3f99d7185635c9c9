/**
 * The mutable state the request path reads: the current registry index and whether the process
 * is draining. Replaced by reference, so a request sees one consistent index.
 */
import type { RegistryIndex } from './registry/index.js'

/** Shared between server.ts (writer) and the apps (readers). */
export interface ProxyState {
  /** null until the first snapshot is loaded. */
  index: RegistryIndex | null
  draining: boolean
  /**
   * True while the index is known current: the change feed is connected and resynced. When false
   * (registry unreachable, or routing from the last-known-good file), a host missing from the
   * index may exist in the registry, so it gets 503 + Retry-After instead of 404.
   */
  synced: boolean
  /** True while the index comes from the snapshot file and the registry has not confirmed it. */
  stale: boolean
  /** Last time the index was confirmed current with the registry, ms since the epoch (0: never). */
  lastSyncAt: number
}

/** A fresh state: nothing loaded, not draining. */
export function createProxyState (): ProxyState {
  return { index: null, draining: false, synced: false, stale: false, lastSyncAt: 0 }
}
