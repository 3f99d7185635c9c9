/**
 * Key sets that never stall the app (@tenant-proxy/verify, docs/descriptor.md "Key sets"): a real
 * TCP key set server that serves, then accepts and never answers (hangs), then is gone (connection
 * refused), behind a real node:http app with the Connect middleware. After the first successful
 * fetch no request waits for the key set: requests complete while the one refresh in flight is
 * still pending, only one fetch is in flight at a time, and unknown kids trigger at most one
 * refresh per cooldown. The verifier's clock is injected, so max-age and cooldown pass without
 * sleeping; the hanging fetch's timeout is a minute, far beyond the test, so nothing here can pass
 * by waiting for it.
 */
import { createServer as createHttpServer, type Server as HttpServer } from 'node:http'
import { createServer, type Server, type Socket } from 'node:net'
import type { AddressInfo } from 'node:net'
import t from 'tap'
import type { Test } from 'tap'
import { request } from 'undici'
import { createVerifier, tenantDescriptorMiddleware, type DescriptorVerifier, type RequestWithDescriptor } from '@tenant-proxy/verify'
import { loadKeyring, type Keyring } from '../src/descriptor/keyring.js'
import { signDescriptor } from '../src/descriptor/sign.js'
import { es256Pem } from './helpers/proxy.js'
import { freePort } from './helpers/postgres.js'
import { until } from './helpers/wait.js'

const ISS = 'shop-production'
const AUD = 'shop'
const HOST = 'acme.example.com'

/** A key set server on a raw TCP socket: `serve` answers, `hang` reads the request and never answers. */
interface KeySetServer {
  url: string
  port: number
  mode: 'serve' | 'hang'
  /** Connections accepted so far. */
  readonly connections: number
  /** Requests answered so far. */
  readonly answered: number
  /** Connections holding a request that was never answered. */
  readonly hanging: Socket[]
  /** Drops the hanging connections (the fetch sees the connection reset). */
  release (): void
  /** Stops listening and drops every connection: the port refuses from now on. */
  kill (): Promise<void>
}

async function keySetServer (t: Test, jwks: () => unknown): Promise<KeySetServer> {
  let connections = 0
  let answered = 0
  const hanging: Socket[] = []
  const sockets = new Set<Socket>()
  const state: { mode: 'serve' | 'hang' } = { mode: 'serve' }
  const server: Server = createServer((socket) => {
    connections++
    sockets.add(socket)
    socket.on('close', () => sockets.delete(socket))
    socket.on('error', () => {})
    let head = ''
    socket.on('data', (chunk: Buffer) => {
      head += chunk.toString('latin1')
      if (!head.includes('\r\n\r\n')) return
      if (state.mode === 'hang') {
        hanging.push(socket)
        return
      }
      answered++
      const body = JSON.stringify(jwks())
      socket.end(`HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncache-control: public, max-age=60\r\ncontent-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`)
    })
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const port = (server.address() as AddressInfo).port
  const kill = async (): Promise<void> => {
    for (const s of sockets) s.destroy()
    if (server.listening) await new Promise<void>((resolve) => server.close(() => resolve()))
  }
  t.teardown(kill)
  return {
    url: `http://127.0.0.1:${port}/.well-known/tenant-proxy/jwks.json`,
    port,
    get mode () { return state.mode },
    set mode (m) { state.mode = m },
    get connections () { return connections },
    get answered () { return answered },
    hanging,
    release: () => { for (const s of hanging.splice(0)) s.destroy() },
    kill
  }
}

/** A real app: the Connect middleware in front of a handler answering with the tenant. */
async function app (t: Test, verifier: DescriptorVerifier): Promise<{ get: (token: string) => Promise<{ status: number, reason?: string, tenant?: string }> }> {
  const mw = tenantDescriptorMiddleware({ verifier })
  const server: HttpServer = createHttpServer((req, res) => {
    mw(req, res, (err) => {
      if (err !== undefined) {
        res.writeHead(500).end()
        return
      }
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ tenant: (req as RequestWithDescriptor).tenantDescriptor?.tenant }))
    })
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(async () => await new Promise<void>((resolve) => { server.closeAllConnections(); server.close(() => resolve()) }))
  const origin = `http://127.0.0.1:${(server.address() as AddressInfo).port}`
  return {
    get: async (token) => {
      const r = await request(`${origin}/orders`, { headers: { host: HOST, 'x-tenant-descriptor': token } })
      return { status: r.statusCode, ...(await r.body.json() as { reason?: string, tenant?: string }) }
    }
  }
}

function signer (ring: Keyring, nowMs: () => number): () => string {
  return () => {
    const s = Math.floor(nowMs() / 1000)
    return signDescriptor({ v: 1, iss: ISS, aud: AUD, sub: 'acme', host: HOST, db: { name: 'acme', host: 'db', port: 5432 }, epoch: 1, iat: s, nbf: s, exp: s + 3600 }, ring.signer)
  }
}

t.test('after the first fetch, a hanging or dead key set server adds no latency', async (t) => {
  const a = loadKeyring([{ key: es256Pem() }])
  const stranger = loadKeyring([{ key: es256Pem() }])
  const keys = await keySetServer(t, () => a.jwks())
  let nowMs = 1_800_000_000_000
  const backgroundErrors: string[] = []
  const verifier = createVerifier({ jwksUrl: keys.url }, {
    issuer: ISS,
    audience: AUD,
    now: () => nowMs,
    // Far beyond the test: a request that waited for the hanging fetch could not finish.
    fetchTimeoutMs: 60_000,
    onKeySetError: (err) => backgroundErrors.push(err.message)
  })
  const good = signer(a, () => nowMs)
  const forged = signer(stranger, () => nowMs)
  const { get } = await app(t, verifier)

  t.match(await get(good()), { status: 200, tenant: 'acme' }, 'first request: the key set is fetched (the one wait allowed)')
  t.equal(keys.answered, 1)

  const timedBatch = async (): Promise<Array<{ r: Awaited<ReturnType<typeof get>>, ms: number }>> => await Promise.all(Array.from({ length: 8 }, async () => {
    const started = performance.now()
    const r = await get(good())
    return { r, ms: performance.now() - started }
  }))
  const slowest = (batch: Array<{ ms: number }>): string => Math.max(...batch.map((x) => x.ms)).toFixed(1)
  const baseline = await timedBatch()
  t.ok(baseline.every((x) => x.r.status === 200))

  // The ops port hangs; the key set goes stale.
  keys.mode = 'hang'
  nowMs += 61_000
  let settled = false
  const timed = await timedBatch()
  const parallel = timed.map((x) => x.r)
  void verifier.settled().then(() => { settled = true })
  // Reported, not asserted (the assertions are on ordering): what "no added latency" looks like.
  t.comment(`8 parallel requests, slowest: ${slowest(baseline)} ms with a fresh key set, ${slowest(timed)} ms with a stale one while the key set server hangs`)
  t.ok(parallel.every((r) => r.status === 200 && r.tenant === 'acme'), '8 parallel requests with a stale key set: all 200')
  await until(() => keys.hanging.length === 1 ? true : undefined, 'the refresh to reach the hanging server')
  t.notOk(settled, 'every request completed while the refresh was still pending')
  t.equal(keys.connections, 2, 'one fetch in flight for all of them (single flight)')
  t.equal(verifier.jwksFetches, 2)

  // While it hangs: more traffic, unknown kids past the cooldown, still no wait and no second fetch.
  nowMs += 31_000
  const during = await Promise.all([...Array.from({ length: 10 }, async () => await get(good())), ...Array.from({ length: 10 }, async () => await get(forged()))])
  t.ok(during.slice(0, 10).every((r) => r.status === 200), 'known kid: 200')
  t.ok(during.slice(10).every((r) => r.status === 401 && r.reason === 'unknown_kid'), 'unknown kid: refused at once with unknown_kid')
  t.notOk(settled, 'the first refresh is still pending')
  t.equal(keys.connections, 2, 'still one fetch in flight')

  // The hanging fetch fails (connection reset): the last good key set is kept.
  keys.release()
  await verifier.settled()
  t.equal(backgroundErrors.length, 1, 'the failed refresh was reported to onKeySetError')
  t.match(backgroundErrors[0], /key set unavailable/)
  t.match(await get(good()), { status: 200 }, 'the last good key set still verifies')
  t.equal(verifier.jwksFetches, 2, 'a failed refresh is not retried before the cooldown')

  // Unknown kids after the cooldown: exactly one refresh for 20 concurrent ones, and none after it.
  nowMs += 30_000
  const flood = await Promise.all(Array.from({ length: 20 }, async () => await get(forged())))
  t.ok(flood.every((r) => r.status === 401 && r.reason === 'unknown_kid'), '20 forged kids: 401 at once')
  t.equal(verifier.jwksFetches, 3, 'one refresh for 20 unknown kids')
  await until(() => keys.hanging.length === 1 ? true : undefined, 'the refresh to reach the hanging server')
  keys.release()
  await verifier.settled()
  nowMs += 10_000
  const again = await Promise.all(Array.from({ length: 20 }, async () => await get(forged())))
  t.ok(again.every((r) => r.reason === 'unknown_kid'))
  t.equal(verifier.jwksFetches, 3, 'within the cooldown: no refresh, however many unknown kids')
  t.equal(keys.connections, 3, 'the key set server saw exactly the fetches the verifier counted')

  // The ops port is gone: connection refused.
  await keys.kill()
  nowMs += 30_000
  t.match(await get(good()), { status: 200, tenant: 'acme' }, 'dead key set server: 200 from the last good key set')
  t.equal(verifier.jwksFetches, 4, 'a refresh was tried in the background')
  await verifier.settled()
  t.match(backgroundErrors.at(-1), /ECONNREFUSED/, 'and failed with connection refused')
  t.match(await get(good()), { status: 200 })
  t.equal(verifier.jwksFetches, 4, 'and is not retried before the cooldown')
})

t.test('no key set yet: the first requests wait for one fetch, bounded by the timeout', async (t) => {
  const a = loadKeyring([{ key: es256Pem() }])
  const keys = await keySetServer(t, () => a.jwks())
  keys.mode = 'hang'
  const verifier = createVerifier({ jwksUrl: keys.url }, { issuer: ISS, audience: AUD, fetchTimeoutMs: 300 })
  const { get } = await app(t, verifier)
  const good = signer(a, Date.now)
  const first = await Promise.all(Array.from({ length: 5 }, async () => await get(good())))
  t.ok(first.every((r) => r.status === 503 && r.reason === 'jwks_unavailable'), 'hanging server, nothing held: 503 jwks_unavailable after the timeout')
  t.equal(keys.connections, 1, 'five waiting requests shared one fetch')

  keys.mode = 'serve'
  t.match(await get(good()), { status: 200 }, 'with nothing held, the next request tries again and succeeds')

  const dead = await freePort()
  const refused = createVerifier({ jwksUrl: `http://127.0.0.1:${dead}/jwks.json` }, { issuer: ISS, audience: AUD })
  await t.rejects(refused.prefetch(), { reason: 'jwks_unavailable', message: /ECONNREFUSED/ }, 'dead server: prefetch fails at once with the cause')
})
