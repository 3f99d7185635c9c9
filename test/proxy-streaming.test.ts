import { Readable } from 'node:stream'
import t from 'tap'
import { request } from 'undici'
import { es256Pem, testRegistry } from './helpers/proxy.js'
import { spawnServe } from './helpers/serve-process.js'
import { startUpstream } from './helpers/upstream.js'

const MB = 1024 * 1024
const SIZE = 100 * MB
const HOLD_AT = 10 * MB

/**
 * A 100 MB body in 64 KiB chunks that stops at 10 MB until `release` resolves: if anything
 * between sender and receiver waited for the whole body, the receiver would never see the
 * first 10 MB and the test would fail on its deadline instead of passing.
 */
function pacedBody (release: Promise<void>): Readable {
  const chunk = Buffer.alloc(64 * 1024, 0x61)
  let sent = 0
  let released = false
  void release.then(() => { released = true })
  return new Readable({
    read () {
      if (sent >= SIZE) { this.push(null); return }
      if (sent >= HOLD_AT && !released) {
        // Pushing later (not re-reading) keeps the stream's own read state consistent.
        void release.then(() => { sent += chunk.length; this.push(chunk) })
        return
      }
      sent += chunk.length
      this.push(chunk)
    }
  })
}

function deferred (): { promise: Promise<void>, resolve: () => void } {
  let resolve = (): void => {}
  const promise = new Promise<void>((r) => { resolve = r })
  return { promise, resolve }
}

t.test('100 MB streams through `tenant-proxy serve` both ways, never held whole by the proxy', async (t) => {
  const registry = await testRegistry(t, [{ slug: 'acme', domains: ['acme.example.com'] }])
  const uploadSeen = deferred()
  const downloadSeen = deferred()
  const upstream = await startUpstream(t, (req, res, seen) => {
    if (req.method === 'GET') {
      // Download: the upstream itself holds at 10 MB until the client has received 9 MB.
      res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': String(SIZE) })
      pacedBody(downloadSeen.promise).pipe(res)
      return
    }
    req.on('data', (c: Buffer) => {
      seen.bodyBytes += c.length
      if (seen.bodyBytes >= 9 * MB) uploadSeen.resolve()
    })
    req.on('end', () => { res.writeHead(200, { 'content-type': 'application/json' }); res.end(JSON.stringify({ bytes: seen.bodyBytes })) })
  })
  const proxy = await spawnServe(t, { REGISTRY_DATABASE_URL: registry.url, TENANT_PROXY_UPSTREAM_URLS: upstream.origin, TENANT_PROXY_DESCRIPTOR_KEYS: es256Pem() })
  const url = `http://127.0.0.1:${proxy.trafficPort}/upload`
  await (await request(url, { method: 'POST', headers: { host: 'acme.example.com' }, body: 'warm-up' })).body.text()
  const liveBefore = await proxy.collectGarbage()
  const before = await proxy.memory()

  const up = await request(url, { method: 'POST', headers: { host: 'acme.example.com', 'content-type': 'application/octet-stream' }, body: pacedBody(uploadSeen.promise) })
  t.equal(up.statusCode, 200)
  t.same(await up.body.json(), { bytes: SIZE }, 'the upstream received all 100 MB, the first 9 MB before the client sent more than 10')

  const down = await request(url, { method: 'GET', headers: { host: 'acme.example.com' } })
  t.equal(down.statusCode, 200)
  let received = 0
  for await (const c of down.body) {
    received += (c as Buffer).length
    if (received >= 9 * MB) downloadSeen.resolve()
  }
  t.equal(received, SIZE, 'the client received all 100 MB, the first 9 MB before the upstream sent more than 10')

  const peak = await proxy.memory()
  const liveAfter = await proxy.collectGarbage()
  const after = await proxy.memory()
  // Live memory = JS heap in use + memory held outside it (Buffers). RSS is reported, not
  // asserted: V8 keeps a grown young generation and glibc keeps freed pages, whatever the body size.
  const live = (u: NodeJS.MemoryUsage): number => u.heapUsed + u.external
  const grown = live(liveAfter) - live(liveBefore)
  t.ok(grown < 20 * MB, `proxy live memory grew ${(grown / MB).toFixed(1)} MB over both 100 MB transfers (limit 20 MB)`)
  t.comment(`proxy RSS: ${(before.rss / MB).toFixed(1)} MB before, peak ${(peak.peak / MB).toFixed(1)} MB, ${(after.rss / MB).toFixed(1)} MB after`)
  t.equal(await proxy.stop(), 0, 'SIGTERM: clean exit')
})
