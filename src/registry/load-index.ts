/**
 * The two full loads of the index, each in a function of its own so that the rows it read are
 * unreachable once it returns. The sync collects the garbage right after a full load (src/gc.ts);
 * a collection that runs while the caller's frame still holds the rows keeps them (about 15 MB of
 * the heap at 100,000 tenants) and the resident memory of a proxy that just started with them.
 */
import { buildIndex, type DatabaseDefaults, type RegistryIndex } from './index.js'
import { readSnapshotFile } from './snapshot-file.js'
import type { RegistryStore } from './store.js'

/** Reads a full snapshot from the registry and builds its index (reusing `previous`'s unchanged routes). */
export async function indexFromRegistry (store: RegistryStore, defaults: DatabaseDefaults, previous: RegistryIndex | null): Promise<RegistryIndex> {
  return buildIndex(await store.snapshot(), defaults, previous)
}

/** Reads and validates the last-known-good file (throws SnapshotFileError) and builds its index. */
export async function indexFromFile (file: string, fingerprint: string, defaults: DatabaseDefaults): Promise<{ index: RegistryIndex, writtenAt: string }> {
  const content = await readSnapshotFile(file, fingerprint)
  // Rows in the file carry resolved database hosts and ports already.
  const index = buildIndex({ version: content.version, registryId: content.registryId, tenants: content.tenants, domains: content.domains }, defaults, null, Date.parse(content.writtenAt))
  return { index, writtenAt: content.writtenAt }
}
