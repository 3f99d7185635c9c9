/**
 * `tenants pause` / `tenants resume` (issue 13, item 4) through a real proxy, a real upstream and
 * the CLI from dist/: a paused tenant's requests are held (not refused) and forwarded on resume;
 * only a request held past the timeout gets 503 + Retry-After; the caps per tenant and in total
 * answer 503 at once; a client that leaves is dropped from the queue; shutdown answers the held
 * ones; WebSocket upgrades are refused with 503; the on-demand TLS ask still allows the domain.
 * Every wait is on a condition (the proxy's held gauge, a response), bounded.
 */
import net from 'node:net'
import t, { type Test } from 'tap'
import { request } from 'undici'
import { runCli } from './helpers/cli.js'
import { startTestProxy, testConfig, testRegistry, type TestRegistry } from './helpers/proxy.js'
import { startUpstream, type TestUpstream } from './helpers/upstream.js'
import { until } from './helpers/wait.js'
import { TLS_ASK_PATH } from '../src/proxy/tls-ask.js'
import { setTimeout as delay } from 'node:timers/promises'

interface Setup { registry: TestRegistry, upstream: TestUpstream, proxy: Awaited<ReturnType<typeof startTestProxy>>, env: Record<string, string> }

async function setup (t: Test, env: Record<string, string> = {}): Promise<Setup> {
  const registry = await testRegistry(t, [
    { slug: 'acme', domains: ['acme.example'] },
    { slug: 'beta', domains: ['beta.example'] },
    { slug: 'sleepy', domains: ['sleepy.example'], state: 'suspended' }
  ])
  const upstream = await startUpstream(t)
  const proxy = await startTestProxy(t, testConfig(registry.url, upstream.origin, { TENANT_PROXY_TRAFFIC_TLS_ASK_PATH: '/.well-known/tls-ask', ...env }))
  return { registry, upstream, proxy, env: { REGISTRY_DATABASE_URL: registry.url } }
}

async function cli (s: Setup, args: string[]): Promise<string> {
  const r = await runCli(args, s.env)
  if (r.code !== 0) throw new Error(`${args.join(' ')} exited ${r.code}: ${r.stderr}`)
  return r.stdout
}

function get (s: Setup, host: string): Promise<{ status: number, headers: Record<string, unknown>, body: string, ms: number }> {
  const started = performance.now()
  return request(`${s.proxy.url}/things`, { headers: { host } }).then(async (r) => ({ status: r.statusCode, headers: r.headers, body: await r.body.text(), ms: performance.now() - started }))
}

async function metric (s: Setup, line: RegExp): Promise<number> {
  const text = await (await request(`${s.proxy.opsUrl}/metrics`)).body.text()
  const m = text.split('\n').find((l) => line.test(l))
  return m === undefined ? NaN : Number(m.split(' ').pop())
}

t.test('held while paused, forwarded on resume; TLS ask still allowed; WebSocket upgrade refused', async (t) => {
  const s = await setup(t)
  const out = await cli(s, ['tenants', 'pause', 'acme', '--timeout', '20s', '--wait'])
  t.match(out, 'tenant acme is paused: proxies hold its requests up to 20s each')
  const shown = JSON.parse(await cli(s, ['tenants', 'show', 'acme', '--json'])) as { paused_hold_ms: number | null }
  t.equal(shown.paused_hold_ms, 20_000, 'tenants show carries the pause')
  const doctor = await runCli(['doctor', '--skip-databases', '--json'], s.env)
  const checks = (JSON.parse(doctor.stdout) as { checks: Array<{ name: string, status: string, detail: string }> }).checks
  t.match(checks.find((c) => c.name === 'paused acme'), { status: 'warn', detail: /tenant acme is paused .* tenant-proxy tenants resume acme/ }, 'doctor warns of a pause (one left behind answers 503)')

  const held = [get(s, 'acme.example'), get(s, 'acme.example')]
  // A request with a body: the body waits with it and is forwarded whole.
  const body = Buffer.alloc(200_000, 'x')
  const upload = request(`${s.proxy.url}/upload`, { method: 'POST', headers: { host: 'acme.example', 'content-type': 'application/octet-stream' }, body })
  await until(() => s.proxy.metrics.heldNow === 3 ? true : undefined, 'three requests held')
  t.equal(s.upstream.seen.length, 0, 'nothing reached the app while paused')
  const other = await get(s, 'beta.example')
  t.equal(other.status, 200, 'other tenants are not affected')
  const up = await request(`${s.proxy.url}/up`)
  t.equal(up.statusCode, 200, 'health unaffected')
  await up.body.dump()
  const ask = await request(`${s.proxy.opsUrl}${TLS_ASK_PATH}?domain=acme.example`)
  t.equal(ask.statusCode, 200, 'the on-demand TLS ask allows a paused tenant\'s domain')
  await ask.body.dump()

  // A WebSocket upgrade is refused with 503 + Retry-After, not held.
  const ws = await rawUpgrade(s.proxy.traffic.port, 'acme.example')
  t.match(ws, /^HTTP\/1\.1 503 /, 'upgrade refused')
  t.match(ws, /retry-after: 5/i)
  t.match(ws, 'TENANT_PROXY_ERR_TENANT_PAUSED')

  t.match(await cli(s, ['tenants', 'resume', 'acme']), 'tenant acme is resumed')
  const answers = await Promise.all(held)
  t.same(answers.map((a) => a.status), [200, 200], 'both held requests forwarded on resume')
  const uploaded = await upload
  t.equal(uploaded.statusCode, 200)
  t.match(await uploaded.body.json(), { method: 'POST', url: '/upload', bodyBytes: 200_000 }, 'the held upload forwarded with its whole body')
  t.equal(s.upstream.seen.filter((r) => r.headers.host !== 'beta.example').length, 3)
  t.ok(s.upstream.seen.every((r) => typeof r.headers['x-tenant-descriptor'] === 'string'), 'with a descriptor')
  t.equal(s.proxy.metrics.heldNow, 0)
  t.equal(await metric(s, /^tenant_proxy_held_requests_total /), 3)
  t.equal(await metric(s, /^tenant_proxy_held_duration_seconds_count\{end="released"\}/), 3)
  t.equal(await metric(s, /^tenant_proxy_requests_total\{outcome="routed",status_class="2xx"\}/), 4)

  t.match(await cli(s, ['tenants', 'resume', 'acme']), 'tenant acme was not paused; nothing changed')
})

t.test('503 + Retry-After only past the timeout; the rest of the queue is unaffected', async (t) => {
  const s = await setup(t, { TENANT_PROXY_ROUTING_PAUSE_RETRY_AFTER_S: '7' })
  await cli(s, ['tenants', 'pause', 'acme', '--timeout', '300ms', '--wait'])
  const r = await get(s, 'acme.example')
  t.equal(r.status, 503)
  t.equal(r.headers['retry-after'], '7')
  t.ok(r.ms >= 290, `answered after the timeout (${Math.round(r.ms)} ms)`)
  t.match(r.body, 'TENANT_PROXY_ERR_TENANT_PAUSED')
  t.match(r.body, 'held 300 ms')
  t.equal(s.upstream.seen.length, 0)
  t.equal(await metric(s, /^tenant_proxy_held_refused_total\{reason="timeout"\}/), 1)
  t.equal(await metric(s, /^tenant_proxy_requests_total\{outcome="paused",status_class="5xx"\}/), 1)

  // A longer timeout set while a request is held applies to it (counted from when it was held):
  // checked past the first timeout, which is what this measures (not a wait for an event).
  await cli(s, ['tenants', 'pause', 'acme', '--timeout', '3s', '--wait'])
  const first = get(s, 'acme.example')
  await until(() => s.proxy.metrics.heldNow === 1 ? true : undefined, 'held')
  const heldAt = performance.now()
  await cli(s, ['tenants', 'pause', 'acme', '--timeout', '30s', '--wait'])
  await delay(Math.max(0, heldAt + 3_300 - performance.now()))
  t.equal(s.proxy.metrics.heldNow, 1, 'still held past the first timeout')
  await cli(s, ['tenants', 'resume', 'acme'])
  t.equal((await first).status, 200, 'forwarded: the new timeout kept it held')
})

t.test('caps: per tenant and in total, 503 at once over them', async (t) => {
  const s = await setup(t, { TENANT_PROXY_ROUTING_PAUSE_MAX_HELD_PER_TENANT: '2', TENANT_PROXY_ROUTING_PAUSE_MAX_HELD: '3' })
  await cli(s, ['tenants', 'pause', 'acme', '--wait'])
  await cli(s, ['tenants', 'pause', 'beta', '--wait'])
  const held = [get(s, 'acme.example'), get(s, 'acme.example')]
  await until(() => s.proxy.metrics.heldNow === 2 ? true : undefined, 'two held')
  const over = await get(s, 'acme.example')
  t.equal(over.status, 503, 'third for one tenant: over maxHeldPerTenant')
  t.match(over.body, 'too many requests held')
  t.equal(over.headers['retry-after'], '5')
  held.push(get(s, 'beta.example'))
  await until(() => s.proxy.metrics.heldNow === 3 ? true : undefined, 'three held')
  const overTotal = await get(s, 'beta.example')
  t.equal(overTotal.status, 503, 'fourth in total: over maxHeld')
  t.equal(await metric(s, /^tenant_proxy_held_refused_total\{reason="overflow"\}/), 2)
  await cli(s, ['tenants', 'resume', 'acme'])
  await cli(s, ['tenants', 'resume', 'beta'])
  t.same((await Promise.all(held)).map((r) => r.status), [200, 200, 200])
})

t.test('a client that leaves while held is dropped from the queue; shutdown answers the held ones', async (t) => {
  const s = await setup(t)
  await cli(s, ['tenants', 'pause', 'acme', '--wait'])
  const socket = net.connect(s.proxy.traffic.port, '127.0.0.1')
  await new Promise((resolve) => socket.once('connect', resolve))
  socket.write('GET /gone HTTP/1.1\r\nHost: acme.example\r\n\r\n')
  await until(() => s.proxy.metrics.heldNow === 1 ? true : undefined, 'held')
  socket.destroy()
  await until(() => s.proxy.metrics.heldNow === 0 ? true : undefined, 'dropped from the queue')
  t.equal(await metric(s, /^tenant_proxy_held_duration_seconds_count\{end="client_closed"\}/), 1)
  t.equal(await metric(s, /^tenant_proxy_requests_total\{outcome="paused",status_class="4xx"\}/), 1, 'counted as 499')

  const held = get(s, 'acme.example')
  await until(() => s.proxy.metrics.heldNow === 1 ? true : undefined, 'held')
  const stopping = s.proxy.stop()
  const r = await held
  t.equal(r.status, 503, 'a held request is answered at shutdown')
  t.match(r.body, 'shutting down')
  await stopping
  t.equal(s.upstream.seen.length, 0)
})

t.test('CLI mistakes change nothing', async (t) => {
  const s = await setup(t)
  const unknown = await runCli(['tenants', 'pause', 'nobody'], s.env)
  t.equal(unknown.code, 1)
  t.match(unknown.stderr, 'TENANT_PROXY_ERR_TENANT_NOT_FOUND')
  const suspended = await runCli(['tenants', 'pause', 'sleepy'], s.env)
  t.equal(suspended.code, 1)
  t.match(suspended.stderr, 'tenant sleepy is suspended; only an active tenant is paused')
  for (const bad of ['0s', 'soon', '61m', '-1s']) {
    const r = await runCli(['tenants', 'pause', 'acme', '--timeout', bad], s.env)
    t.equal(r.code, 2, `--timeout ${bad}: usage error`)
  }
  const rows = await s.registry.pool.query<{ n: number }>('SELECT count(*)::int AS n FROM tenant_proxy.tenants WHERE paused_hold_ms IS NOT NULL')
  t.equal(rows.rows[0]?.n, 0, 'no tenant paused')
})

/** Sends a WebSocket upgrade and returns what the proxy answered (until it closes, or 2 s). */
async function rawUpgrade (port: number, host: string): Promise<string> {
  const socket = net.connect(port, '127.0.0.1')
  let text = ''
  socket.on('data', (c: Buffer) => { text += c.toString() })
  socket.write(`GET /cable HTTP/1.1\r\nHost: ${host}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n`)
  await until(() => text.includes('\r\n\r\n') && text.includes('}') ? true : undefined, 'an answer to the upgrade', 2_000)
  socket.destroy()
  return text
}
