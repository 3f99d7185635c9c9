/**
 * A string-keyed hash table of small integers (row numbers) in one Int32Array: open addressing
 * with linear probing, the keys themselves living in a StringArena and found through the rows'
 * reference column (`refs[row]`). Four bytes per slot at a load of at most one half, against
 * about 30 bytes per entry of a Map (entry, chain and bucket) plus the key string it holds.
 *
 * A slot holds 0 (empty), -1 (a deleted entry: probes go on past it) or row + 1.
 */
import { equalRefs, equalsRef, hashRef, type ArenaView } from './string-arena.js'

const EMPTY = 0
const DELETED = -1

export class KeyTable {
  #slots: Int32Array
  #mask: number
  #size = 0
  #deleted = 0

  /**
   * Sized for `expected` keys without a rebuild; `slots`, when given, is a zeroed array of
   * KeyTable.slotsFor(expected) the caller allocated (see IndexBuilder.beside).
   */
  constructor (expected = 0, slots: Int32Array = new Int32Array(capacityFor(expected))) {
    if (slots.length !== capacityFor(expected)) throw new RangeError('key table slots of the wrong size')
    this.#slots = slots
    this.#mask = slots.length - 1
  }

  /** How many slots a table for `expected` keys has. */
  static slotsFor (expected: number): number {
    return capacityFor(expected)
  }

  get size (): number {
    return this.#size
  }

  /** The row whose key is `key` (hash: hashString(key)), or -1. */
  find (arena: ArenaView, refs: Int32Array, key: string, hash: number): number {
    const slots = this.#slots
    const mask = this.#mask
    for (let i = hash & mask; ; i = (i + 1) & mask) {
      const v = slots[i] as number
      if (v === EMPTY) return -1
      if (v !== DELETED && equalsRef(arena, refs[v - 1] as number, key)) return v - 1
    }
  }

  /** Adds `row` under its key (refs[row]), which must not be in the table. */
  insert (arena: ArenaView, refs: Int32Array, row: number, hash: number): void {
    // Rebuilt to a load of at most a third, so that the next rebuild is a sixth of the slots away.
    if ((this.#size + this.#deleted + 1) * 2 > this.#slots.length) this.#rebuild(arena, refs, Math.ceil((this.#size + 1) * 1.5))
    const slots = this.#slots
    const mask = this.#mask
    let i = hash & mask
    while ((slots[i] as number) > 0) i = (i + 1) & mask
    if (slots[i] === DELETED) this.#deleted--
    slots[i] = row + 1
    this.#size++
  }

  /**
   * Adds `row` under its key (refs[row]) unless a row with an equal key is in the table already;
   * false then (a snapshot file naming one key twice). One probe sequence for both.
   */
  insertNew (arena: ArenaView, refs: Int32Array, row: number): boolean {
    if ((this.#size + this.#deleted + 1) * 2 > this.#slots.length) this.#rebuild(arena, refs, Math.ceil((this.#size + 1) * 1.5))
    const slots = this.#slots
    const mask = this.#mask
    const ref = refs[row] as number
    let i = hashRef(arena, ref) & mask
    for (let v = slots[i] as number; v !== EMPTY; i = (i + 1) & mask, v = slots[i] as number) {
      if (v !== DELETED && equalRefs(arena, refs[v - 1] as number, ref)) return false
    }
    slots[i] = row + 1
    this.#size++
    return true
  }

  /** Removes `key`; returns its row, or -1 when absent. */
  remove (arena: ArenaView, refs: Int32Array, key: string, hash: number): number {
    const slots = this.#slots
    const mask = this.#mask
    for (let i = hash & mask; ; i = (i + 1) & mask) {
      const v = slots[i] as number
      if (v === EMPTY) return -1
      if (v !== DELETED && equalsRef(arena, refs[v - 1] as number, key)) {
        slots[i] = DELETED
        this.#size--
        this.#deleted++
        return v - 1
      }
    }
  }

  /** Every row in the table, in slot order. */
  * rows (): Generator<number> {
    const slots = this.#slots
    for (let i = 0; i < slots.length; i++) {
      const v = slots[i] as number
      if (v > 0) yield v - 1
    }
  }

  /**
   * Re-inserts every row after the arena was rebuilt (references changed, keys did not), or to
   * grow or to drop deleted slots.
   */
  #rebuild (arena: ArenaView, refs: Int32Array, expected: number): void {
    const old = this.#slots
    const cap = capacityFor(expected)
    const slots = new Int32Array(cap)
    const mask = cap - 1
    for (let j = 0; j < old.length; j++) {
      const v = old[j] as number
      if (v <= 0) continue
      let i = hashRef(arena, refs[v - 1] as number) & mask
      while (slots[i] !== EMPTY) i = (i + 1) & mask
      slots[i] = v
    }
    this.#slots = slots
    this.#mask = mask
    this.#deleted = 0
  }
}

/** A power of two at least twice `expected` (a load of at most one half), and at least 16. */
function capacityFor (expected: number): number {
  let cap = 16
  while (cap < expected * 2 + 2) cap *= 2
  return cap
}
