/**
 * The queue of src/proxy/held-requests.ts on its own (it knows nothing of HTTP): caps, release by
 * slug and in full, a request still paused after a change (held on, under its new slug when the
 * tenant was renamed), an owner that throws on release (the others are still released), timeout,
 * cancel, drain, and the metrics each way out leaves. Integration: test/tenants-pause.test.ts.
 */
import t from 'tap'
import { ProxyMetrics } from '../src/ops/metrics.js'
import { HeldRequests, type HeldHandlers, type HeldTicket } from '../src/proxy/held-requests.js'

interface Probe { handlers: HeldHandlers, released: number, expired: string[], still: { slug: string, holdMs: number } | null, throws: boolean }

function probe (): Probe {
  const p: Probe = {
    released: 0,
    expired: [],
    still: null,
    throws: false,
    handlers: {
      recheck: () => {
        if (p.throws) throw new Error('owner failed')
        if (p.still === null) p.released++
        return p.still
      },
      expire: (end) => { p.expired.push(end) }
    }
  }
  return p
}

/** One sample of the metrics text: `series` is the name with its labels as printed. */
async function sample (metrics: ProxyMetrics, series: string): Promise<number> {
  const line = (await metrics.registry.metrics()).split('\n').find((l) => l.startsWith(`${series} `))
  return line === undefined ? NaN : Number(line.slice(series.length + 1))
}

t.test('caps per tenant and in total', async (t) => {
  const metrics = new ProxyMetrics()
  const held = new HeldRequests({ maxPerTenant: 2, maxTotal: 3 }, metrics)
  t.type(held.hold('a', 60_000, probe().handlers), 'object')
  t.type(held.hold('a', 60_000, probe().handlers), 'object')
  t.equal(held.hold('a', 60_000, probe().handlers), 'overflow', 'third of one tenant')
  t.type(held.hold('b', 60_000, probe().handlers), 'object')
  t.equal(held.hold('c', 60_000, probe().handlers), 'overflow', 'fourth in total')
  t.equal(held.size, 3)
  t.equal(metrics.heldNow, 3)
  t.equal(await sample(metrics, 'tenant_proxy_held_refused_total{reason="overflow"}'), 2)
  held.drain()
  t.equal(held.size, 0)
})

t.test('release: by slug, held on when still paused (renamed), an owner that throws strands nobody', async (t) => {
  const metrics = new ProxyMetrics()
  const held = new HeldRequests({ maxPerTenant: 10, maxTotal: 10 }, metrics)
  const [a1, a2, b1] = [probe(), probe(), probe()]
  held.hold('a', 60_000, a1.handlers)
  held.hold('a', 60_000, a2.handlers)
  held.hold('b', 60_000, b1.handlers)
  held.release(['c'])
  t.equal(held.size, 3, 'an unrelated change releases nothing')
  a1.still = { slug: 'a2', holdMs: 60_000 }
  held.release(['a'])
  t.equal(a2.released, 1, 'resumed: released')
  t.equal(held.heldFor('a'), 0)
  t.equal(held.heldFor('a2'), 1, 'still paused under its new slug: held on there')
  a1.still = null
  b1.throws = true
  t.throws(() => { held.release(null) }, /owner failed/, 'the owner\'s error is thrown after the others were released')
  t.equal(a1.released, 1, 'released despite the other owner\'s failure')
  t.equal(held.size, 0)
  t.equal(metrics.heldNow, 0)
  t.equal(await sample(metrics, 'tenant_proxy_held_requests_total'), 3)
})

t.test('timeout, cancel and drain', async (t) => {
  const metrics = new ProxyMetrics()
  const held = new HeldRequests({ maxPerTenant: 10, maxTotal: 10 }, metrics)
  const timed = probe()
  const expired = new Promise<void>((resolve) => { timed.handlers = { ...timed.handlers, expire: (end) => { timed.expired.push(end); resolve() } } })
  // The queue's timers do not keep a process alive (the proxy's listeners do): this one does here.
  const alive = setInterval(() => {}, 1_000)
  t.teardown(() => { clearInterval(alive) })
  held.hold('a', 20, timed.handlers)
  const gone = probe()
  const ticket = held.hold('a', 60_000, gone.handlers) as HeldTicket
  ticket.cancel()
  ticket.cancel()
  t.equal(held.size, 1, 'a cancelled request leaves the queue once')
  await expired
  t.same(timed.expired, ['timeout'])
  t.same(gone.expired, [], 'no callback for a client that left')
  const late = probe()
  held.hold('b', 60_000, late.handlers)
  held.drain()
  t.same(late.expired, ['draining'])
  t.equal(held.hold('b', 60_000, probe().handlers), 'draining', 'nothing is held once draining')
  t.equal(await sample(metrics, 'tenant_proxy_held_refused_total{reason="timeout"}'), 1)
  t.equal(await sample(metrics, 'tenant_proxy_held_refused_total{reason="draining"}'), 2)
  t.equal(held.size, 0)
  t.equal(await sample(metrics, 'tenant_proxy_held_duration_seconds_count{end="client_closed"}'), 1)
  t.equal(await sample(metrics, 'tenant_proxy_held_duration_seconds_count{end="timeout"}'), 1)
  t.equal(await sample(metrics, 'tenant_proxy_held_duration_seconds_count{end="client_closed"}'), 1)
  t.equal(await sample(metrics, 'tenant_proxy_held_duration_seconds_count{end="timeout"}'), 1)
})
