/**
 * The rest of the upstream path over real sockets: Server-Sent Events reach the client as they
 * are produced, WebSockets are proxied with the tenant's descriptor on the upgrade (spoofed
 * copies stripped) and closed with 1001 at shutdown, and SIGTERM drains a real `serve` process.
 */
import { createServer, type IncomingMessage } from 'node:http'
import type { AddressInfo } from 'node:net'
import t from 'tap'
import { request } from 'undici'
import { WebSocket, WebSocketServer } from 'ws'
import { es256Pem, startTestProxy, testConfig, testRegistry } from './helpers/proxy.js'
import { spawnServe } from './helpers/serve-process.js'
import { until } from './helpers/wait.js'

/** A promise with its resolve function outside. */
function deferred (): { promise: Promise<void>, resolve: () => void } {
  let resolve = (): void => {}
  const promise = new Promise<void>((r) => { resolve = r })
  return { promise, resolve }
}

async function listen (server: ReturnType<typeof createServer>): Promise<number> {
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  return (server.address() as AddressInfo).port
}

function claims (token: string | undefined): { sub?: string } {
  if (token === undefined) return {}
  return JSON.parse(Buffer.from(token.split('.')[1] ?? '', 'base64url').toString()) as { sub?: string }
}

t.test('Server-Sent Events arrive one by one, each before the next is produced', async (t) => {
  const registry = await testRegistry(t, [{ slug: 'acme', domains: ['acme.example'] }])
  const next = [deferred(), deferred(), deferred()]
  const sentAt: number[] = []
  const upstream = createServer((_req, res) => {
    res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' })
    void (async () => {
      for (let i = 0; i < 3; i++) {
        sentAt.push(performance.now())
        res.write(`id: ${i}\ndata: event ${i}\n\n`)
        // The next event is produced only after the client has received this one: a proxy that
        // buffers would deadlock here and the test would fail on its deadline.
        await next[i]?.promise
      }
      res.end()
    })()
  })
  const port = await listen(upstream)
  t.teardown(() => { upstream.closeAllConnections(); upstream.close() })
  const proxy = await startTestProxy(t, testConfig(registry.url, `http://127.0.0.1:${port}`))
  const res = await request(`${proxy.url}/events`, { headers: { host: 'acme.example', accept: 'text/event-stream' } })
  t.equal(res.statusCode, 200)
  t.equal(res.headers['content-type'], 'text/event-stream')
  const receivedAt: number[] = []
  let text = ''
  for await (const chunk of res.body) {
    text += (chunk as Buffer).toString()
    while (receivedAt.length < 3 && text.includes(`data: event ${receivedAt.length}\n\n`)) {
      receivedAt.push(performance.now())
      next[receivedAt.length - 1]?.resolve()
    }
  }
  t.equal(receivedAt.length, 3, 'all three events')
  for (let i = 0; i < 2; i++) t.ok((receivedAt[i] ?? Infinity) < (sentAt[i + 1] ?? 0), `event ${i} reached the client before event ${i + 1} was produced`)
})

t.test('WebSockets: tenant resolution on the upgrade, one genuine descriptor, echo both ways, 1001 at shutdown', async (t) => {
  const registry = await testRegistry(t, [{ slug: 'acme', domains: ['acme.example'] }, { slug: 'paused', domains: ['paused.example'], state: 'suspended' }])
  const upgrades: IncomingMessage[] = []
  const server = createServer()
  const wss = new WebSocketServer({ server })
  wss.on('connection', (socket, req) => {
    upgrades.push(req)
    socket.on('message', (data) => socket.send(`echo:${(data as Buffer).toString()}`))
  })
  const port = await listen(server)
  t.teardown(() => { for (const c of wss.clients) c.terminate(); server.closeAllConnections(); server.close() })
  const proxy = await startTestProxy(t, testConfig(registry.url, `http://127.0.0.1:${port}`))
  const wsUrl = `ws://127.0.0.1:${proxy.traffic.port}/cable`

  const client = new WebSocket(wsUrl, ['actioncable-v1-json'], {
    headers: { host: 'acme.example', 'X-Tenant-Descriptor': 'forged.by.client', 'x_tenant_descriptor': 'forged2', cookie: 'session=abc', 'X-Forwarded-Ssl': 'on', 'X-Forwarded-Proto': 'https', 'X_Forwarded_Host': 'paused.example', Forwarded: 'proto=https' }
  })
  await new Promise<void>((resolve, reject) => { client.once('open', resolve); client.once('error', reject) })
  t.equal(client.protocol, 'actioncable-v1-json', 'the subprotocol is negotiated end to end')
  const reply = new Promise<string>((resolve) => client.once('message', (d) => resolve((d as Buffer).toString())))
  client.send('ping')
  t.equal(await reply, 'echo:ping')

  const upgrade = upgrades[0]
  const descriptorLines = (upgrade?.rawHeaders ?? []).filter((_v, i, a) => i % 2 === 0 && /^x[-_]tenant[-_]descriptor$/i.test(a[i] ?? ''))
  t.equal(descriptorLines.length, 1, 'exactly one descriptor header on the upstream upgrade request')
  t.equal(claims(upgrade?.headers['x-tenant-descriptor'] as string | undefined).sub, 'acme', 'and it is the proxy\'s, for the tenant')
  t.equal(upgrade?.headers.host, 'acme.example', 'Host preserved')
  t.equal(upgrade?.headers.cookie, 'session=abc', 'cookies pass (Action Cable authenticates with them)')
  t.equal(upgrade?.headers['x-forwarded-for'], '127.0.0.1')
  t.match(upgrade?.headers, { 'x-forwarded-proto': 'http', 'x-forwarded-host': 'acme.example', 'x-forwarded-port': '80' }, 'the proxy\'s forwarding headers on the upgrade too')
  t.same((upgrade?.rawHeaders ?? []).filter((n, i) => i % 2 === 0 && (/_|^forwarded$|^x-forwarded-ssl$/i.test(n))), [], 'no forged forwarding header, no underscore name on the upgrade')

  for (const [host, status] of [['unknown.example', 404], ['paused.example', 403]] as const) {
    const refused = new WebSocket(wsUrl, { headers: { host } })
    const got = await new Promise<number>((resolve) => {
      refused.once('unexpected-response', (_req, res) => { resolve(res.statusCode ?? 0); res.resume() })
      refused.once('open', () => resolve(101))
      refused.once('error', () => resolve(-1))
    })
    t.equal(got, status, `${host}: ${status}, no upgrade`)
    refused.terminate()
  }
  t.equal(upgrades.length, 1, 'refused upgrades never reached the app')

  const closed = new Promise<number>((resolve) => client.once('close', (code) => resolve(code)))
  await proxy.stop()
  t.equal(await closed, 1001, 'shutdown closes WebSockets with 1001 (going away), so clients reconnect')
})

t.test('SIGTERM: /up 503 at once, in-flight request completes, new connections refused after the delay, exit 0', async (t) => {
  const registry = await testRegistry(t, [{ slug: 'acme', domains: ['acme.example'] }])
  const release = deferred()
  const arrived = deferred()
  const upstream = createServer((req, res) => {
    if (req.url === '/slow') {
      arrived.resolve()
      void release.promise.then(() => res.end('finally'))
      return
    }
    res.end('quick')
  })
  const port = await listen(upstream)
  t.teardown(() => { upstream.closeAllConnections(); upstream.close() })
  const proxy = await spawnServe(t, {
    REGISTRY_DATABASE_URL: registry.url,
    TENANT_PROXY_UPSTREAM_URLS: `http://127.0.0.1:${port}`,
    TENANT_PROXY_DESCRIPTOR_KEYS: es256Pem(),
    TENANT_PROXY_SHUTDOWN_DRAIN_DELAY_MS: '400',
    TENANT_PROXY_SHUTDOWN_GRACE_MS: '10000'
  })
  const base = `http://127.0.0.1:${proxy.trafficPort}`
  const slow = request(`${base}/slow`, { headers: { host: 'acme.example' } })
  await arrived.promise
  proxy.child.kill('SIGTERM')
  // A fresh connection each time (no keep-alive reuse): it proves what a new client sees.
  const fresh = async (path: string, host = 'anything'): Promise<number | string> => {
    try {
      const res = await request(`${base}${path}`, { headers: { host, connection: 'close' }, reset: true })
      await res.body.dump()
      return res.statusCode
    } catch (err) {
      return (err as { code?: string }).code ?? 'error'
    }
  }
  t.equal(await until(async () => { const s = await fresh('/up'); return s === 503 ? s : undefined }, '/up 503 after SIGTERM', 5_000), 503)
  t.equal(await fresh('/quick', 'acme.example'), 200, 'during the delay new connections are still served')
  t.equal(await until(async () => { const s = await fresh('/up'); return s === 'ECONNREFUSED' ? s : undefined }, 'new connections refused after the delay', 5_000), 'ECONNREFUSED')
  release.resolve()
  const res = await slow
  t.equal(res.statusCode, 200)
  t.equal(await res.body.text(), 'finally', 'the in-flight request completed')
  const code = proxy.child.exitCode ?? await new Promise<number | null>((resolve) => proxy.child.once('exit', (c) => resolve(c)))
  t.equal(code, 0, 'exit code 0 (after the one SIGTERM)')
})
