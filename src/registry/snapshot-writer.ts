/**
 * Keeps the last-known-good snapshot file current: a registry listener that rewrites the file
 * once the index has been quiet for a moment (a burst of changes costs one write, and a write
 * never competes with the changes it would have to abort for), and at once after a full load.
 * An index that came from the file itself is not written back until the registry confirmed it.
 */
import type { Logger } from 'pino'
import { describeError } from './connect.js'
import type { RegistryIndex } from './index.js'
import type { AppliedChange, FeedStatus, IndexSource, RegistryListener } from './listener.js'
import { SnapshotWriteAborted, writeSnapshotFile } from './snapshot-file.js'

/** How long the index must be quiet before the file is rewritten. */
const FILE_QUIET_MS = 1_000

export interface SnapshotWriterOptions {
  readonly file: string
  readonly fingerprint: string
  readonly logger: Logger
  /** A full garbage collection, run once the file write after a full load serialised the index (see src/gc.ts). */
  readonly collect: () => void
}

/** Writes the served index to the snapshot file after it changed. */
export class SnapshotWriter implements RegistryListener {
  readonly #o: SnapshotWriterOptions
  #index: RegistryIndex | null = null
  #stale = false
  #stopped = false
  #timer: NodeJS.Timeout | null = null
  #writing: Promise<void> | null = null
  #dirty = false
  /** A full load happened since the last collection: collect once its write serialised the index. */
  #collectAfterWrite = false

  constructor (opts: SnapshotWriterOptions) {
    this.#o = opts
  }

  indexReplaced (index: RegistryIndex, how: { readonly source: IndexSource }): void {
    this.#index = index
    this.#stale = how.source === 'file'
    if (this.#stale) return
    this.#collectAfterWrite = true
    this.#schedule(0)
  }

  changesApplied (index: RegistryIndex, _change: AppliedChange): void {
    this.#index = index
    this.#stale = false
    this.#schedule()
  }

  feedChanged (status: FeedStatus): void {
    this.#stale = status.stale
  }

  /** Stops scheduling; a pending or running write completes (a change not on disk yet is written now). */
  async stop (): Promise<void> {
    this.#stopped = true
    await this.#writing
    if (this.#timer !== null || this.#dirty) {
      if (this.#timer !== null) clearTimeout(this.#timer)
      this.#timer = null
      this.#write()
      await this.#writing
    }
  }

  #schedule (delayMs = FILE_QUIET_MS): void {
    if (this.#stopped) return
    if (this.#writing !== null) {
      this.#dirty = true
      return
    }
    // Restart the quiet period on every change.
    if (this.#timer !== null) clearTimeout(this.#timer)
    this.#timer = setTimeout(() => {
      this.#timer = null
      this.#write()
    }, delayMs)
  }

  /** Starts writing the current index (never a stale one: it came from the file). */
  #write (): void {
    const { file, fingerprint, logger } = this.#o
    const index = this.#index
    if (index === null || this.#stale) return
    this.#dirty = false
    const version = index.version
    const unchanged = (): boolean => this.#index === index && index.version === version
    const serialized = (): void => { if (this.#collectAfterWrite) this.#collect() }
    this.#writing = writeSnapshotFile(file, index, fingerprint, unchanged, serialized).then(({ bytes }) => {
      logger.debug({ file, version, bytes }, 'wrote the last-known-good snapshot file')
    }, (err: unknown) => {
      if (err instanceof SnapshotWriteAborted) {
        this.#dirty = true
        return
      }
      logger.error({ file, error: describeError(err) }, 'cannot write the last-known-good snapshot file')
    }).finally(() => {
      this.#writing = null
      if (this.#collectAfterWrite && !this.#dirty) this.#collect()
      if (this.#dirty && !this.#stopped) this.#schedule()
    })
  }

  #collect (): void {
    this.#collectAfterWrite = false
    this.#o.collect()
  }
}
