/**
 * When a proxy prunes the registry change log (src/registry/prune.ts does it) and what it makes of
 * the outcome. Pruning is housekeeping: no outcome of it touches the change feed (issue 12: a
 * failed prune was taken for a lost feed and cost every proxy a full reload).
 *
 * - pruned, nothing to prune, or another proxy pruning (lock taken): again after `everyMs`;
 * - denied (the read-only role of docs/operations.md): one warning saying so and how to prune
 *   instead, then a quiet retry after `deniedRetryMs` (a grant may have been added meanwhile);
 * - an error (connection, timeout): one warning per failure, again after `errorRetryMs`.
 */
import type { Logger } from 'pino'
import { describeError } from './connect.js'
import type { PruneResult } from './prune.js'

/** What a pruner outcome is counted as (tenant_proxy_registry_prunes_total's result label). */
export type PruneCount = PruneResult['outcome'] | 'error'

/** A proxy prunes at most this often (the lock makes the fleet prune once per round). */
export const PRUNE_EVERY_MS = 3_600_000
/** A denied prune is tried again this much later, quietly (a grant may have been added). */
export const DENIED_RETRY_MS = 24 * 3_600_000
/** A failed prune (connection, timeout) is tried again this much later. */
export const ERROR_RETRY_MS = 300_000

export interface PrunerOptions {
  /** Change rows older than this many seconds go; 0 disables pruning. */
  readonly retentionS: number
  readonly everyMs?: number
  readonly deniedRetryMs?: number
  readonly errorRetryMs?: number
  /** One prune (on a connection of its own). */
  readonly prune: (retentionS: number) => Promise<PruneResult>
  readonly logger: Logger
  readonly count?: (result: PruneCount) => void
  readonly now?: () => number
}

/** The prune schedule of one proxy; `tick` is called at every periodic check. */
export class ChangeLogPruner {
  readonly #o: PrunerOptions
  #nextAt = 0
  #running = false
  #deniedWarned = false

  constructor (opts: PrunerOptions) {
    this.#o = opts
  }

  get #deniedRetryMs (): number {
    return this.#o.deniedRetryMs ?? DENIED_RETRY_MS
  }

  /** Prunes when due; never throws, never waits for a prune that is already running. */
  async tick (): Promise<void> {
    const o = this.#o
    const now = (o.now ?? Date.now)()
    if (o.retentionS === 0 || this.#running || now < this.#nextAt) return
    this.#running = true
    try {
      const result = await o.prune(o.retentionS)
      o.count?.(result.outcome)
      this.#nextAt = now + (result.outcome === 'denied' ? this.#deniedRetryMs : o.everyMs ?? PRUNE_EVERY_MS)
      if (result.outcome === 'denied') {
        if (!this.#deniedWarned) {
          o.logger.warn({ reason: result.reason, retryInS: Math.round(this.#deniedRetryMs / 1000) },
            'this proxy may not prune the registry change log (read-only role); prune with `tenant-proxy registry prune` from a role that may, e.g. from cron')
        } else {
          o.logger.debug({ reason: result.reason }, 'registry change log prune still denied')
        }
        this.#deniedWarned = true
      } else if (result.outcome === 'pruned') {
        if (this.#deniedWarned) o.logger.info('this proxy may prune the registry change log again')
        this.#deniedWarned = false
        o.logger.info({ deleted: result.deleted, through: result.through, retentionS: o.retentionS }, 'pruned the registry change log')
      } else {
        this.#deniedWarned = false
        o.logger.debug({ outcome: result.outcome }, result.outcome === 'busy' ? 'another process is pruning the registry change log' : 'nothing to prune in the registry change log')
      }
    } catch (err) {
      o.count?.('error')
      const retryMs = o.errorRetryMs ?? ERROR_RETRY_MS
      this.#nextAt = now + retryMs
      o.logger.warn({ error: describeError(err), retryInS: Math.round(retryMs / 1000) }, 'pruning the registry change log failed; the change feed is not affected')
    } finally {
      this.#running = false
    }
  }
}
