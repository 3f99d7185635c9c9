import { Readable } from 'node:stream'
import t from 'tap'
import { request } from 'undici'
import { es256Pem, testRegistry } from './helpers/proxy.js'
import { spawnServe } from './helpers/serve-process.js'
import { startUpstream } from './helpers/upstream.js'

const MB = 1024 * 1024
const SIZE = 50 * MB

/** 50 MB generated in 64 KiB chunks, never held in memory at once. */
function body (): Readable {
  const chunk = Buffer.alloc(64 * 1024, 0x61)
  let sent = 0
  return new Readable({
    read () {
      if (sent >= SIZE) { this.push(null); return }
      sent += chunk.length
      this.push(chunk)
    }
  })
}

t.test('50 MB streams through `tenant-proxy serve` both ways without the proxy buffering it', async (t) => {
  const registry = await testRegistry(t, [{ slug: 'acme', domains: ['acme.example.com'] }])
  const upstream = await startUpstream(t, (req, res, seen) => {
    if (req.method === 'GET') {
      res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': String(SIZE) })
      body().pipe(res)
      return
    }
    req.on('data', (c: Buffer) => { seen.bodyBytes += c.length })
    req.on('end', () => { res.writeHead(200, { 'content-type': 'application/json' }); res.end(JSON.stringify({ bytes: seen.bodyBytes })) })
  })
  const proxy = await spawnServe(t, { REGISTRY_DATABASE_URL: registry.url, TENANT_PROXY_UPSTREAM_URLS: upstream.origin, TENANT_PROXY_DESCRIPTOR_KEYS: es256Pem(), TENANT_PROXY_LOG_LEVEL: 'warn' })
  const url = `http://127.0.0.1:${proxy.trafficPort}/upload`
  // Warm up so the baseline includes the code paths, then measure peak growth.
  await (await request(url, { method: 'POST', headers: { host: 'acme.example.com' }, body: 'warm' })).body.text()
  const before = await proxy.memory()

  const up = await request(url, { method: 'POST', headers: { host: 'acme.example.com', 'content-type': 'application/octet-stream' }, body: body() })
  t.equal(up.statusCode, 200)
  t.same(await up.body.json(), { bytes: SIZE }, 'the upstream received all 50 MB')

  const down = await request(url, { method: 'GET', headers: { host: 'acme.example.com' } })
  t.equal(down.statusCode, 200)
  let received = 0
  for await (const c of down.body) received += (c as Buffer).length
  t.equal(received, SIZE, 'the client received all 50 MB')

  const after = await proxy.memory()
  const growth = after.peak - before.rss
  t.ok(growth < 20 * MB, `proxy peak memory grew ${(growth / MB).toFixed(1)} MB (limit 20 MB)`)
  t.equal(await proxy.stop(), 0, 'SIGTERM: clean exit')
})
