/**
 * The two full loads of the index, each in a function of its own so that the rows it read are
 * unreachable once it returns. The sync collects the garbage right after the first full load
 * (src/gc.ts); a collection that runs while the caller's frame still holds the rows keeps them
 * (about 15 MB of the heap at 100,000 tenants) and the resident memory of a proxy that just
 * started with them.
 */
import { setImmediate as yieldToEventLoop } from 'node:timers/promises'
import type pg from 'pg'
import { applyDelta, IndexBuilder, type DatabaseDefaults, type RegistryIndex } from './index.js'
import { readSnapshotFile } from './snapshot-file.js'
import type { RegistryStore } from './store.js'

/** Runs a registry query on the connection the load uses (the feed connection, one query at a time). */
export type RunQuery = <T>(fn: (client: pg.ClientBase) => Promise<T>) => Promise<T>

/** Why a paged load could not produce an index; the caller may try again. */
export class PagedLoadIncomplete extends Error {}

/**
 * Reads the whole registry in keyset pages and builds its index beside the served one (reusing
 * `previous`'s unchanged routes). Each page is one short statement, so no statement lasts longer
 * than its own rows take whatever the registry's size, and the event loop runs between pages.
 *
 * Consistency: the pages are read at different instants, so together they are no snapshot. The
 * version V0 is read before the first page; every row that differs between V0 and the instant its
 * page was read belongs to a tenant or domain changed after V0, which the change log names. The
 * delta after V0 (one statement, read after the last page) re-reads each such
 * tenant and domain as of its own version V1, later than every page; rows not named were the same
 * at V0 and at every page's instant. Applied to the built index, it gives exactly the registry at
 * V1. A domain read whose tenant was not (added or deleted between the two pages) is skipped by
 * the builder; it was changed after V0, so the delta brings it back or removes it. This needs the
 * change log to cover V0 and hold at most `deltaLimit` changes since: otherwise the load is
 * incomplete (PagedLoadIncomplete) and is tried again.
 */
export async function indexFromRegistry (store: RegistryStore, run: RunQuery, defaults: DatabaseDefaults, previous: RegistryIndex | null, opts: { pageSize: number, deltaLimit: number }): Promise<RegistryIndex> {
  const head = await run(async (c) => await store.head(c))
  const builder = await IndexBuilder.beside({ version: head.version, registryId: head.registryId, loadedAt: Date.now() }, defaults, previous)
  let afterId = 0
  for (;;) {
    const page = await run(async (c) => await store.tenantPage(afterId, opts.pageSize, c))
    await inSlices(page, (rows) => builder.addTenants(rows))
    const last = page.at(-1)
    if (last === undefined || page.length < opts.pageSize) break
    afterId = last.id
  }
  let afterHost: string | null = null
  for (;;) {
    const page = await run(async (c) => await store.domainPage(afterHost, opts.pageSize, c))
    await inSlices(page, (rows) => builder.addDomains(rows))
    const last = page.at(-1)
    if (last === undefined || page.length < opts.pageSize) break
    afterHost = last.hostname
  }
  const index = builder.finish()
  const delta = await run(async (c) => await store.delta(head.version, opts.deltaLimit, { client: c }))
  if (!delta.complete) throw new PagedLoadIncomplete(`the change log since the load began is ${delta.reason === 'gap' ? 'pruned' : 'too long'}`)
  if (delta.registryId !== head.registryId) throw new PagedLoadIncomplete('the registry changed during the load')
  if (delta.version > index.version && !applyDelta(index, delta, defaults).consistent) throw new PagedLoadIncomplete('the change log names a tenant the load lacks')
  return index
}

/**
 * Rows added to the index being built per event-loop turn. A page's query resolves in the same
 * turn as the parse of its last chunk of rows; building all of its rows there too made that turn
 * the longest of a full load (at 1,000,000 tenants and pages of 2,000: 20–26 ms with a collection
 * in it, profiled). So the build starts on a turn of its own and goes BUILD_SLICE rows at a time.
 */
const BUILD_SLICE = 500

async function inSlices<T> (rows: readonly T[], add: (rows: readonly T[]) => void): Promise<void> {
  for (let i = 0; i < rows.length; i += BUILD_SLICE) {
    await yieldToEventLoop()
    add(rows.length <= BUILD_SLICE ? rows : rows.slice(i, i + BUILD_SLICE))
  }
}

/** Reads and validates the last-known-good file (throws SnapshotFileError) and builds its index. */
export async function indexFromFile (file: string, fingerprint: string, defaults: DatabaseDefaults): Promise<{ index: RegistryIndex, writtenAt: string }> {
  const { index, writtenAt } = await readSnapshotFile(file, fingerprint, defaults)
  return { index, writtenAt }
}
