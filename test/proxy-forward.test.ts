/**
 * Plain HTTP forwarding (src/proxy/forward.ts) over real sockets: what the app receives and what
 * the client gets back, byte for byte where it matters, backpressure both ways, a client that
 * leaves mid-answer, an app that dies mid-answer, interim responses.
 */
import { once } from 'node:events'
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http'
import { connect, type AddressInfo } from 'node:net'
import t, { type Test } from 'tap'
import { request } from 'undici'
import { startTestProxy, testConfig, testRegistry } from './helpers/proxy.js'
import { rawRequest } from './helpers/raw-http.js'
import { until } from './helpers/wait.js'

type Handler = (req: IncomingMessage, res: ServerResponse) => void

async function rig (t: Test, handler: Handler, logLines?: string[]): Promise<{ port: number, metrics: () => Promise<string> }> {
  const registry = await testRegistry(t, [{ slug: 'acme', domains: ['acme.example.com'] }])
  const upstream = createServer(handler)
  upstream.listen(0, '127.0.0.1')
  await once(upstream, 'listening')
  t.teardown(() => { upstream.closeAllConnections(); upstream.close() })
  const proxy = await startTestProxy(t, testConfig(registry.url, `http://127.0.0.1:${(upstream.address() as AddressInfo).port}`), logLines)
  return { port: proxy.traffic.port, metrics: async () => await (await request(`${proxy.opsUrl}/metrics`)).body.text() }
}

t.test('the request target and the answer\'s headers pass as sent; the upstream\'s hop-by-hop headers do not', async (t) => {
  let seenUrl = ''
  const { port } = await rig(t, (req, res) => {
    seenUrl = req.url ?? ''
    req.resume()
    res.setHeader('set-cookie', ['a=1; Path=/', 'b=2; HttpOnly'])
    res.setHeader('connection', 'keep-alive, x-upstream-private')
    res.setHeader('x-upstream-private', 'secret')
    res.setHeader('x-request-id', 'the-app-s-own')
    res.setHeader('x-tenant-descriptor', 'echoed')
    res.end('ok')
  })
  const target = '/p/%2F/x.y?a=1&a=2&b=%2f;c=d&e&f=%E2%82%AC'
  const res = await rawRequest(port, `GET ${target} HTTP/1.1\r\nHost: acme.example.com\r\nConnection: close\r\n\r\n`)
  t.equal(res.status, 200)
  t.equal(seenUrl, target, 'the target reaches the app byte for byte (no re-encoding of the query)')
  t.match(res.head, /\r\nset-cookie: a=1; Path=\/\r\nset-cookie: b=2; HttpOnly\r\n/i, 'both Set-Cookie fields, in order')
  t.notMatch(res.head.toLowerCase(), /x-upstream-private|x-tenant-descriptor|keep-alive/, 'nominated, descriptor and keep-alive headers stay behind')
  t.match(res.headers['x-request-id'], /^[0-9a-f]{16}-[0-9a-z]+$/, 'the proxy\'s request id, not the app\'s')
  t.equal(res.body, 'ok')
})

t.test('HEAD, 204 and 304 answers carry no body', async (t) => {
  const { port } = await rig(t, (req, res) => {
    req.resume()
    if (req.url === '/204') res.writeHead(204).end()
    else if (req.url === '/304') res.writeHead(304, { etag: '"x"' }).end()
    else res.writeHead(200, { 'content-type': 'text/plain', 'content-length': '5' }).end(req.method === 'HEAD' ? undefined : 'hello')
  })
  const head = await rawRequest(port, 'HEAD /x HTTP/1.1\r\nHost: acme.example.com\r\nConnection: close\r\n\r\n')
  t.same([head.status, head.headers['content-length'], head.body], [200, '5', ''])
  const noContent = await rawRequest(port, 'GET /204 HTTP/1.1\r\nHost: acme.example.com\r\nConnection: close\r\n\r\n')
  t.same([noContent.status, noContent.body], [204, ''])
  const notModified = await rawRequest(port, 'GET /304 HTTP/1.1\r\nHost: acme.example.com\r\nIf-None-Match: "x"\r\nConnection: close\r\n\r\n')
  t.same([notModified.status, notModified.headers.etag, notModified.body], [304, '"x"', ''])
})

t.test('103 Early Hints are not relayed; the final answer is', async (t) => {
  const { port } = await rig(t, (req, res) => {
    req.resume()
    res.writeEarlyHints({ link: '</style.css>; rel=preload; as=style' })
    res.end('final')
  })
  const res = await rawRequest(port, 'GET / HTTP/1.1\r\nHost: acme.example.com\r\nConnection: close\r\n\r\n')
  t.equal(res.status, 200)
  t.equal(res.body, 'final')
})

t.test('backpressure: a client that stops reading pauses the app\'s writes; nothing is lost when it reads again', async (t) => {
  const chunk = Buffer.alloc(64 * 1024, 'x')
  const total = 512 // 32 MiB
  let paused = false
  let written = 0
  const { port } = await rig(t, (req, res) => {
    req.resume()
    res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': String(chunk.length * total) })
    const pump = (): void => {
      while (written < total) {
        written++
        if (!res.write(chunk)) {
          paused = true
          res.once('drain', pump)
          return
        }
      }
      res.end()
    }
    pump()
  })
  const socket = connect(port, '127.0.0.1')
  socket.write('GET /big HTTP/1.1\r\nHost: acme.example.com\r\nConnection: close\r\n\r\n')
  // Read the first bytes, then stop reading: the kernel buffers fill, the proxy's write returns
  // false, undici stops reading from the app, and the app's write returns false.
  await once(socket, 'data')
  socket.pause()
  await until(() => paused ? true : undefined, 'the app to see backpressure')
  t.ok(written < total, `the app was paused after ${written} of ${total} chunks, not allowed to run ahead`)
  let received = 0
  socket.on('data', (c: Buffer) => { received += c.length })
  socket.resume()
  await once(socket, 'close')
  t.ok(received > chunk.length * (total - 1), 'the rest arrived once the client read again')
  t.equal(written, total)
})

t.test('a client that leaves mid-answer: the app\'s response is cancelled, the request logged 499', async (t) => {
  const lines: string[] = []
  let appClosed = false
  const { port } = await rig(t, (req, res) => {
    req.resume()
    res.writeHead(200, { 'content-type': 'text/plain' })
    res.write('first part')
    // Never ends by itself: only the proxy cancelling it closes it.
    res.on('close', () => { appClosed = true })
  }, lines)
  const socket = connect(port, '127.0.0.1')
  socket.write('GET /stream HTTP/1.1\r\nHost: acme.example.com\r\nConnection: close\r\n\r\n')
  await once(socket, 'data')
  socket.destroy()
  await until(() => appClosed ? true : undefined, 'the app\'s response to be cancelled')
  const line = await until(() => lines.find((l) => l.includes('"msg":"request"')), 'the access-log line')
  t.match(JSON.parse(line), { status: 499, outcome: 'routed', tenant: 'acme' })
})

t.test('an app that dies mid-answer: the client sees the answer cut short, never completed or replaced', async (t) => {
  const lines: string[] = []
  const { port, metrics } = await rig(t, (req, res) => {
    req.resume()
    res.writeHead(200, { 'content-type': 'text/plain', 'content-length': '100' })
    res.write('only ten b')
    setImmediate(() => res.socket?.destroy())
  }, lines)
  const res = await rawRequest(port, 'GET / HTTP/1.1\r\nHost: acme.example.com\r\nConnection: close\r\n\r\n')
  t.equal(res.status, 200, 'the status line had gone out')
  t.equal(res.body, 'only ten b', 'the body stops where the app stopped')
  await until(() => lines.find((l) => l.includes('upstream request failed')), 'the warning')
  t.match(await metrics(), /tenant_proxy_upstream_errors_total\{kind="reset"\} 1/, 'counted as an upstream reset')
})
