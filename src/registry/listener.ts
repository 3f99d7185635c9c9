/**
 * What the registry sync announces, and to whom. The sync owns the index and the feed; the parts
 * that react (the proxy state the data path reads, metrics, the descriptor cache, held requests of
 * paused tenants, the snapshot file) each implement the one method they care about, and
 * src/server.ts wires them up. Modelled on kamal-proxy's one-method consumer interfaces
 * (HealthCheckConsumer, TargetStateConsumer): a part says what happened instead of writing into
 * the others' state.
 */
import type { RegistryIndex } from './index.js'
import type { RegistryDelta } from './store.js'
import type { PruneCount } from './pruner.js'

/** Where a replacing index came from. */
export type IndexSource = 'registry' | 'file'

/**
 * Why a full load ran: the first load of a process with nothing to resume from (`start`), SIGHUP
 * (`reload`), the change log no longer covering the index's version (`gap`), a different registry
 * behind the same URL (`registry_changed`), more changes than a delta applies (`backlog`), a delta
 * naming a tenant the index lacks (`inconsistent`).
 */
export type FullLoadReason = 'start' | 'reload' | 'gap' | 'registry_changed' | 'backlog' | 'inconsistent'
export const FULL_LOAD_REASONS: readonly FullLoadReason[] = ['start', 'reload', 'gap', 'registry_changed', 'backlog', 'inconsistent']

/** What a resume (the change log applied instead of a full load) resumed from. */
export type ResumeFrom = 'reconnect' | 'file'
export const RESUME_FROM: readonly ResumeFrom[] = ['reconnect', 'file']

/** How applied changes reached the proxy: announced with their notification, or read from the change log. */
export type DeltaSource = 'announcement' | 'query'
export const DELTA_SOURCES: readonly DeltaSource[] = ['announcement', 'query']

/** Registry queries that are retried on their own when they fail on a live connection. */
export type SyncQuery = 'delta' | 'check' | 'prune' | 'report' | 'load'
export const SYNC_QUERIES: readonly SyncQuery[] = ['delta', 'check', 'prune', 'report', 'load']

/** A new index replaced the one served (full load from the registry, or the snapshot file at start). */
export interface IndexReplacedListener {
  indexReplaced (index: RegistryIndex, how: { readonly source: IndexSource, readonly reason: FullLoadReason | 'file' }): void
}

/** A delta was applied to the served index in place (already visible to requests). */
export interface ChangesAppliedListener {
  changesApplied (index: RegistryIndex, change: AppliedChange): void
}

/** What a delta did. */
export interface AppliedChange {
  readonly from: number
  readonly to: number
  /** Slugs of every tenant the delta touched (old and new slugs of a renamed one). */
  readonly touchedSlugs: readonly string[]
  /** Hostnames no longer in the index. */
  readonly removedHosts: readonly string[]
  /** The rows the delta was applied from, for a listener that replays it on another index (a cluster worker's, src/cluster/primary.ts). */
  readonly delta: Extract<RegistryDelta, { complete: true }>
}

/** Whether the served index is known current, and since when. */
export interface FeedStatus {
  /** The change feed is connected and the index resynced on it: a host missing from the index does not exist. */
  readonly synced: boolean
  /** The index comes from the snapshot file and the registry has not confirmed it. */
  readonly stale: boolean
  /** Last time the index was confirmed current with the registry, ms since the epoch (0: never). */
  readonly lastSyncAt: number
  /**
   * Why the feed is deaf (its own heartbeat notifications do not arrive, src/registry/heartbeat.ts),
   * or null. A deaf feed still counts as synced for routing: the periodic check keeps the index current.
   */
  readonly deaf: string | null
}

/** The feed's status changed, or the index was confirmed current again (lastSyncAt). */
export interface FeedListener {
  feedChanged (status: FeedStatus): void
}

/** Things worth counting that change nothing a request reads. */
export type SyncEvent =
  | { readonly kind: 'full-load', readonly reason: FullLoadReason, readonly ok: boolean }
  | { readonly kind: 'resume', readonly from: ResumeFrom }
  /** A delta was applied (a version or more). */
  | { readonly kind: 'changes', readonly source: DeltaSource }
  | { readonly kind: 'reconnect' }
  | { readonly kind: 'query-failed', readonly query: SyncQuery }
  | { readonly kind: 'full-load-wait', readonly waiting: boolean }
  /** A prune of the change log was tried (src/registry/pruner.ts). */
  | { readonly kind: 'prune', readonly result: PruneCount }

export interface SyncEventListener {
  syncEvent (event: SyncEvent): void
}

/** A listener implements any of the four; the sync calls what is there, in the order listeners were given. */
export type RegistryListener = Partial<IndexReplacedListener & ChangesAppliedListener & FeedListener & SyncEventListener>
