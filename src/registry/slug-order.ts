/**
 * An index's slugs in code-unit order (for slugs, which are ASCII: byte order), for the ops
 * descriptor API's tenant list. Built on first use and then kept in order by the deltas, so a
 * page costs a binary search, not a copy and sort of the registry.
 *
 * The build never holds the event loop for long: sorting 1,000,000 slugs in one call takes 0.4 to
 * 1.7 s (string length and machine load), which would stall every request of the proxy. The keys
 * are copied COPY_SLICE at a time (decoding a million slugs from the index's arena takes 100 ms
 * and more), sorted in chunks of CHUNK and merged pairwise, yielding to the event loop between
 * slices; the edits of deltas applied meanwhile are kept and replayed onto the result. The copy
 * may read a touched slug in either state (the index's rows are walked in order and changed in
 * place, a new tenant appended): replaying the edits settles every touched slug, whichever copy
 * of it the walk saw, and untouched slugs stay where they were read.
 */

/** Slugs copied from the index per slice of the build. */
const COPY_SLICE = 20_000

/** Slugs sorted per slice of the build (about 5 ms each on an idle core). */
const CHUNK = 8_192
/** Merged output elements per slice of the build. */
const MERGE_SLICE = 32_768
/**
 * Presence changes above which a delta is merged into the order in one linear pass instead of
 * one splice each (a splice moves the array's tail: about a millisecond at 1,000,000).
 */
const MAX_SPLICES = 64

/** A slug that appeared (true) or vanished (false). */
export type SlugEdit = readonly [slug: string, present: boolean]

/** The sorted slugs of one index's bySlug map. */
export class SlugOrder {
  readonly #keys: () => Iterable<string>
  #sorted: string[] | null = null
  #building: Promise<readonly string[]> | null = null
  /** Edits applied while a build runs, replayed onto its result. */
  #pending: SlugEdit[] = []

  /** `keys` returns the index's current slugs (bySlug.keys()). */
  constructor (keys: () => Iterable<string>) {
    this.#keys = keys
  }

  /** The sorted slugs, built on first use; do not modify. */
  async sorted (): Promise<readonly string[]> {
    if (this.#sorted !== null) return this.#sorted
    this.#building ??= this.#build().finally(() => { this.#building = null })
    return await this.#building
  }

  /** True once the order is built or being built: only then do deltas need to report edits. */
  get tracking (): boolean {
    return this.#sorted !== null || this.#building !== null
  }

  /** Records the slugs a delta added or removed (each slug at most once per call). */
  apply (edits: readonly SlugEdit[]): void {
    if (edits.length === 0) return
    if (this.#sorted !== null) this.#sorted = patch(this.#sorted, edits)
    else if (this.#building !== null) this.#pending.push(...edits)
  }

  async #build (): Promise<readonly string[]> {
    this.#pending = []
    const keys: string[] = []
    for (const key of this.#keys()) {
      if (keys.push(key) % COPY_SLICE === 0) await yieldToEventLoop()
    }
    let runs: string[][] = []
    for (let i = 0; i < keys.length; i += CHUNK) {
      // The default sort compares UTF-16 code units: byte order for ASCII, and several times
      // faster than any comparator function.
      runs.push(keys.slice(i, i + CHUNK).sort())
      if (i + CHUNK < keys.length) await yieldToEventLoop()
    }
    while (runs.length > 1) {
      const next: string[][] = []
      for (let i = 0; i < runs.length; i += 2) {
        const a = runs[i] as string[]
        const b = runs[i + 1]
        next.push(b === undefined ? a : await mergeSliced(a, b))
      }
      runs = next
    }
    let sorted = runs[0] ?? []
    // Deltas applied while building, in order: the result is the index as it is now.
    sorted = patch(sorted, this.#pending)
    this.#pending = []
    this.#sorted = sorted
    return sorted
  }
}

/** `sorted` with the edits applied (in place by splices when few, else one linear merge). */
export function patch (sorted: string[], edits: readonly SlugEdit[]): string[] {
  if (edits.length === 0) return sorted
  if (edits.length <= MAX_SPLICES) {
    for (const [slug, present] of edits) {
      const at = lowerBound(sorted, slug)
      const there = sorted[at] === slug
      if (present && !there) sorted.splice(at, 0, slug)
      else if (!present && there) sorted.splice(at, 1)
    }
    return sorted
  }
  // The last edit of each slug wins; every touched slug is taken out, the present ones merged back.
  const final = new Map<string, boolean>()
  for (const [slug, present] of edits) final.set(slug, present)
  const added = [...final].filter(([, present]) => present).map(([slug]) => slug).sort()
  const kept = sorted.filter((slug) => !final.has(slug))
  return merge(kept, added)
}

/** The first position in `sorted` whose slug is not below `slug` (binary search). */
export function lowerBound (sorted: readonly string[], slug: string): number {
  let lo = 0
  let hi = sorted.length
  while (lo < hi) {
    const mid = (lo + hi) >>> 1
    if ((sorted[mid] as string) < slug) lo = mid + 1
    else hi = mid
  }
  return lo
}

function merge (a: readonly string[], b: readonly string[]): string[] {
  const out: string[] = []
  let i = 0
  let j = 0
  while (i < a.length && j < b.length) out.push((a[i] as string) <= (b[j] as string) ? a[i++] as string : b[j++] as string)
  while (i < a.length) out.push(a[i++] as string)
  while (j < b.length) out.push(b[j++] as string)
  return out
}

async function mergeSliced (a: readonly string[], b: readonly string[]): Promise<string[]> {
  const out: string[] = []
  let i = 0
  let j = 0
  while (i < a.length || j < b.length) {
    const end = out.length + MERGE_SLICE
    while (out.length < end && i < a.length && j < b.length) out.push((a[i] as string) <= (b[j] as string) ? a[i++] as string : b[j++] as string)
    while (out.length < end && j >= b.length && i < a.length) out.push(a[i++] as string)
    while (out.length < end && i >= a.length && j < b.length) out.push(b[j++] as string)
    await yieldToEventLoop()
  }
  return out
}

/** Lets pending I/O (requests, the change feed) run: setImmediate runs after the poll phase. */
async function yieldToEventLoop (): Promise<void> {
  await new Promise<void>((resolve) => setImmediate(resolve))
}
