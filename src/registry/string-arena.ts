/**
 * The index's strings (slugs, hostnames, database names) packed in one byte buffer, each a length
 * byte and its characters: at a million tenants a JS string costs 16 bytes of header plus its
 * characters rounded up to 8, and one more pointer where it is held; here it costs its length
 * plus one, and a 4-byte reference. Registry names are ASCII (names.ts, the schema's CHECKs); a
 * string that is not, or longer than 255, is kept as a JS string in a side list instead, so any
 * string round-trips.
 *
 * Append-only: bytes are never rewritten, and a growth copies them, so a reference stays valid for
 * the life of the arena (a Route decodes its strings lazily from the arena it was made with). A
 * string that is no longer used is only counted (`dead`); the owner builds a fresh arena when
 * that grows, and routes made before keep the old one.
 */

/** The reference of no string (a null slug or host). */
export const NO_STRING = -0x80000000

/** What a string reference is read against: one arena's buffer and side list at a point in time. */
export interface ArenaView {
  readonly bytes: Uint8Array
  readonly odd: readonly string[]
}

export class StringArena implements ArenaView {
  bytes: Uint8Array
  /** Strings that are not short ASCII; reference -1 - position. */
  readonly odd: string[] = []
  #used = 0
  /** Bytes (and side strings, counted by length) no longer referenced. */
  dead = 0

  constructor (capacity = 4096) {
    this.bytes = new Uint8Array(Math.max(16, capacity))
  }

  /**
   * An arena over `bytes`, of which the first `used` are in use (as read back from a snapshot
   * file), taking ownership of both; `dead` as counted by the caller.
   */
  static over (bytes: Uint8Array, used: number, odd: readonly string[], dead: number): StringArena {
    const a = new StringArena(0)
    a.bytes = bytes
    a.#used = used
    a.odd.push(...odd)
    a.dead = dead
    return a
  }

  /** Bytes in use, dead ones included. */
  get used (): number {
    return this.#used
  }

  /** Stores `s`; returns its reference. */
  add (s: string): number {
    const n = s.length
    if (n <= 255) {
      if (this.#used + n + 1 > this.bytes.length) this.#grow(n + 1)
      const b = this.bytes
      const at = this.#used
      let i = 0
      for (; i < n; i++) {
        const c = s.charCodeAt(i)
        if (c > 0x7f) break
        b[at + 1 + i] = c
      }
      if (i === n) {
        b[at] = n
        this.#used = at + 1 + n
        return at
      }
    }
    this.odd.push(s)
    return -this.odd.length
  }

  /** Marks the string at `ref` unused (for the compaction decision only). */
  release (ref: number): void {
    if (ref === NO_STRING) return
    this.dead += ref >= 0 ? (this.bytes[ref] as number) + 1 : (this.odd[-1 - ref] as string).length
  }

  #grow (need: number): void {
    let cap = this.bytes.length * 2
    while (cap < this.#used + need) cap *= 2
    const next = new Uint8Array(cap)
    next.set(this.bytes.subarray(0, this.#used))
    this.bytes = next
  }
}

/** True when the string at `ref` in `a` is `s`. */
export function equalsRef (a: ArenaView, ref: number, s: string): boolean {
  if (ref < 0) return ref !== NO_STRING && a.odd[-1 - ref] === s
  const b = a.bytes
  const n = b[ref] as number
  if (n !== s.length) return false
  for (let i = 0; i < n; i++) if (b[ref + 1 + i] !== s.charCodeAt(i)) return false
  return true
}

/** True when the strings at references `x` and `y` of `a` are equal. */
export function equalRefs (a: ArenaView, x: number, y: number): boolean {
  if (x === y) return true
  if (x < 0 || y < 0) return x !== NO_STRING && y !== NO_STRING && decodeRef(a, x) === decodeRef(a, y)
  const b = a.bytes
  const n = b[x] as number
  if (n !== b[y]) return false
  for (let i = 1; i <= n; i++) if (b[x + i] !== b[y + i]) return false
  return true
}

/** The string at `ref`, or null for NO_STRING. */
export function decodeRef (a: ArenaView, ref: number): string | null {
  if (ref === NO_STRING) return null
  if (ref < 0) return a.odd[-1 - ref] as string
  const n = a.bytes[ref] as number
  // One native call for the whole string; names are at most 255 characters (far below argument limits).
  return String.fromCharCode.apply(null, a.bytes.subarray(ref + 1, ref + 1 + n) as unknown as number[])
}

/** FNV-1a over the UTF-16 code units of `s` (the same units the arena stores for ASCII). */
export function hashString (s: string): number {
  let h = 0x811c9dc5
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 0x01000193)
  return h >>> 0
}

/** hashString of the string at `ref` (when a table is rebuilt). */
export function hashRef (a: ArenaView, ref: number): number {
  if (ref < 0) return hashString(a.odd[-1 - ref] as string)
  const b = a.bytes
  const n = b[ref] as number
  let h = 0x811c9dc5
  for (let i = 0; i < n; i++) h = Math.imul(h ^ (b[ref + 1 + i] as number), 0x01000193)
  return h >>> 0
}
