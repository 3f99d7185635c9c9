import { connect } from 'node:net'
import t from 'tap'
import { request } from 'undici'
import { startTestProxy, testConfig, testRegistry } from './helpers/proxy.js'
import { startUpstream } from './helpers/upstream.js'

async function until<T> (probe: () => T | undefined, what: string, timeoutMs = 5_000): Promise<T> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const value = probe()
    if (value !== undefined) return value
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((resolve) => setImmediate(resolve))
  }
}

t.test('upstream down → 502 with TENANT_PROXY_ERR_UPSTREAM_CONNECT', async (t) => {
  const registry = await testRegistry(t, [{ slug: 'acme', domains: ['acme.example.com'] }])
  const upstream = await startUpstream(t)
  await upstream.close()
  const proxy = await startTestProxy(t, testConfig(registry.url, upstream.origin))
  const res = await request(`${proxy.url}/`, { headers: { host: 'acme.example.com' } })
  t.equal(res.statusCode, 502)
  t.match(await res.body.json(), { error: { code: 'TENANT_PROXY_ERR_UPSTREAM_CONNECT', status: 502 } })
  const metrics = await (await request(`${proxy.opsUrl}/metrics`)).body.text()
  t.match(metrics, /tenant_proxy_upstream_errors_total\{kind="connect"\} 1/)
})

t.test('upstream too slow to answer → 504 with TENANT_PROXY_ERR_UPSTREAM_TIMEOUT', async (t) => {
  const registry = await testRegistry(t, [{ slug: 'acme', domains: ['acme.example.com'] }])
  const upstream = await startUpstream(t, () => { /* never answers */ })
  const proxy = await startTestProxy(t, testConfig(registry.url, upstream.origin, { TENANT_PROXY_UPSTREAM_HEADERS_TIMEOUT_MS: '300' }))
  const res = await request(`${proxy.url}/`, { headers: { host: 'acme.example.com' } })
  t.equal(res.statusCode, 504)
  t.match(await res.body.json(), { error: { code: 'TENANT_PROXY_ERR_UPSTREAM_TIMEOUT' } })
})

t.test('a client that aborts is logged with status 499 and its upstream request is cancelled', async (t) => {
  const registry = await testRegistry(t, [{ slug: 'acme', domains: ['acme.example.com'] }])
  let arrived: (() => void) | undefined
  let cancelled: (() => void) | undefined
  const reached = new Promise<void>((resolve) => { arrived = resolve })
  const upstreamCancelled = new Promise<void>((resolve) => { cancelled = resolve })
  const upstream = await startUpstream(t, (_req, res) => {
    res.on('close', () => { if (!res.writableFinished) cancelled?.() })
    arrived?.()
  })
  const lines: string[] = []
  const proxy = await startTestProxy(t, testConfig(registry.url, upstream.origin), lines)
  const socket = connect(proxy.traffic.port, '127.0.0.1')
  socket.write('GET /slow HTTP/1.1\r\nHost: acme.example.com\r\n\r\n')
  await reached
  socket.destroy()
  const line = await until(() => lines.map((l) => JSON.parse(l) as Record<string, unknown>).find((l) => l.msg === 'request' && l.status === 499), 'the 499 log line')
  t.match(line, { tenant: 'acme', host: 'acme.example.com', outcome: 'routed', status: 499 })
  await upstreamCancelled
  t.pass('the proxy closed its upstream request instead of waiting for the answer')
})

t.test('one log line per request, without the descriptor or secrets', async (t) => {
  const registry = await testRegistry(t, [{ slug: 'acme', domains: ['acme.example.com'] }])
  const upstream = await startUpstream(t)
  const lines: string[] = []
  const config = testConfig(registry.url, upstream.origin)
  const proxy = await startTestProxy(t, config, lines)
  const res = await request(`${proxy.url}/x`, { headers: { host: 'acme.example.com' } })
  const seen = await res.body.json() as { headers: Record<string, string> }
  const token = seen.headers['x-tenant-descriptor'] ?? ''
  t.ok(token.length > 20)
  const requestLines = await until(() => { const l = lines.filter((x) => x.includes('"msg":"request"')); return l.length > 0 ? l : undefined }, 'the request log line')
  t.equal(requestLines.length, 1)
  const entry = JSON.parse(requestLines[0] ?? '{}') as Record<string, unknown>
  t.match(entry, { level: 30, host: 'acme.example.com', tenant: 'acme', outcome: 'routed', status: 200 })
  t.ok(typeof entry.reqId === 'string' && typeof entry.ms === 'number' && typeof entry.upstreamMs === 'number')
  const all = lines.join('\n')
  t.notOk(all.includes(token), 'descriptor never logged')
  t.notOk(all.includes(config.descriptor.keys[0]?.key.split('\n')[1] ?? 'unreachable'), 'signing key never logged')
  t.notMatch(all, /postgres:\/\/[^\s"]*@/, 'no database URL with credentials')
})
