/**
 * The sorted slugs behind the ops API's tenant list: the chunked build gives exactly the sorted
 * keys and lets the event loop run while it works, deltas applied during a build are replayed,
 * and patches (few edits by splice, many by one merge) keep the order equal to a fresh sort.
 *
 * Guards: src/registry/slug-order.ts.
 */
import t from 'tap'
import { lowerBound, patch, SlugOrder, type SlugEdit } from '../src/registry/slug-order.js'

/** Deterministic pseudo-random distinct slugs (xorshift32, exact in 32-bit integers). */
function slugs (n: number, seed = 1): string[] {
  const out = new Set<string>()
  let x = seed >>> 0 || 1
  for (let i = 0; out.size < n && i < n * 4; i++) {
    x ^= x << 13
    x >>>= 0
    x ^= x >>> 17
    x ^= x << 5
    x >>>= 0
    out.add(`t${x.toString(36)}${x % 3 === 0 ? '-x' : ''}`)
  }
  if (out.size < n) throw new Error('slug generator repeated itself')
  return [...out]
}

t.test('the build equals a plain sort, shares one run between callers and yields to the event loop', async (t) => {
  const keys = new Set(slugs(100_000))
  const order = new SlugOrder(() => keys.keys())
  t.notOk(order.tracking)
  let turns = 0
  let building = true
  const tick = (): void => {
    turns++
    if (building) setImmediate(tick)
  }
  setImmediate(tick)
  const [a, b] = await Promise.all([order.sorted(), order.sorted()])
  building = false
  t.equal(a, b, 'one build for concurrent callers')
  t.equal(a.join(' '), [...keys].sort().join(' '), 'byte order, every slug once')
  t.ok(turns >= 10, `the event loop ran ${turns} times during the build`)
  t.ok(order.tracking)
  t.equal(await order.sorted(), a, 'built once')
})

t.test('edits applied while the build runs are in its result', async (t) => {
  const keys = new Set(slugs(50_000, 7))
  const order = new SlugOrder(() => keys.keys())
  const done = order.sorted()
  t.ok(order.tracking, 'tracking from the moment the build starts')
  // The keys were copied when the build started; the index changes meanwhile.
  const gone = [...keys].slice(0, 100)
  const edits: SlugEdit[] = []
  for (const s of gone) {
    keys.delete(s)
    edits.push([s, false])
  }
  for (const s of ['0first', 'zlast', 'tmiddle']) {
    keys.add(s)
    edits.push([s, true])
  }
  order.apply(edits.slice(0, 50))
  await new Promise<void>((resolve) => setImmediate(resolve))
  order.apply(edits.slice(50))
  t.equal((await done).join(' '), [...keys].sort().join(' '))
})

t.test('edits between the slices of the copy: a slug read twice or not at all comes out once, or not', async (t) => {
  // More keys than one slice of the copy (COPY_SLICE, 20,000): the copy itself spans turns.
  const keys = new Set(slugs(50_000, 11))
  const all = [...keys]
  const order = new SlugOrder(() => keys.keys())
  const done = order.sorted()
  // The first slice is copied; the rest is not yet.
  const copied = all[10] as string
  const later = all[45_000] as string
  keys.delete(copied)
  keys.add(copied) // moved to the end: the copy reads it a second time
  keys.delete(later) // never read
  keys.add('aa-new')
  order.apply([[copied, false], [copied, true], [later, false], ['aa-new', true]])
  const result = await done
  t.equal(result.join(' '), [...keys].sort().join(' '), 'each slug once, in order')
  t.equal(result.length, keys.size)
})

t.test('patch: splices for few edits, one merge for many; both equal a fresh sort', async (t) => {
  const base = slugs(5_000, 3).sort()
  for (const count of [1, 10, 64, 65, 1_000]) {
    const set = new Set(base)
    const edits: SlugEdit[] = []
    const fresh = slugs(count, 100 + count)
    for (let i = 0; i < count; i++) {
      if (i % 2 === 0) {
        const s = base[(i * 37) % base.length] as string
        set.delete(s)
        edits.push([s, false])
      } else {
        const s = fresh[i] as string
        set.add(s)
        edits.push([s, true])
      }
    }
    t.same(patch([...base], edits), [...set].sort(), `${count} edits`)
  }
  const redundant: SlugEdit[] = [['b', true], ['zz', false], ['c', true], ['c', false], ['d', false], ['d', true]]
  t.same(patch(['a', 'b', 'd'], redundant), ['a', 'b', 'd'], 'adding a present slug or removing an absent one changes nothing; the last edit wins')
  const many: SlugEdit[] = [...redundant, ...slugs(70, 9).map((s): SlugEdit => [s, false])]
  t.same(patch(['a', 'b', 'd'], many), ['a', 'b', 'd'], 'the same through the merge')
})

t.test('lowerBound', async (t) => {
  const s = ['a', 'a-b', 'a0', 'b']
  t.same(['', 'a', 'a-', 'a-b', 'a-c', 'a0', 'az', 'b', 'c'].map((x) => lowerBound(s, x)), [0, 0, 1, 1, 2, 2, 3, 3, 4])
})
