// Benchmark upstream: the smallest useful HTTP app, so the proxies' costs dominate. Besides the
// answer every request gets, two paths for the benchmark itself (never part of the load):
//   /__bench/headers  answers with the request headers it received (what a proxy forwarded);
//   /__bench/stats    answers with counters since start: requests served, and how many of them
//                     carried the descriptor header, and how many came without it but with
//                     X-Forwarded-For (so a round can check that every response came from here
//                     and that the proxy under test injected the header each time).
import { createServer } from 'node:http'

const DESCRIPTOR_HEADER = (process.argv[2] ?? 'x-tenant-descriptor').toLowerCase()
const body = Buffer.from('{"ok":true}\n')
let served = 0
let withDescriptor = 0
let forwardedWithoutDescriptor = 0
const server = createServer((req, res) => {
  req.resume()
  if (req.url.startsWith('/__bench/')) {
    const answer = req.url === '/__bench/stats' ? { served, withDescriptor, forwardedWithoutDescriptor } : req.url === '/__bench/headers' ? req.headers : null
    res.writeHead(answer === null ? 404 : 200, { 'content-type': 'application/json' })
    res.end(JSON.stringify(answer))
    return
  }
  served++
  if (req.headers[DESCRIPTOR_HEADER] !== undefined) withDescriptor++
  else if (req.headers['x-forwarded-for'] !== undefined) forwardedWithoutDescriptor++
  res.writeHead(200, { 'content-type': 'application/json', 'content-length': body.length })
  res.end(body)
})
server.keepAliveTimeout = 72_000
server.listen(0, '127.0.0.1', () => {
  process.stdout.write(JSON.stringify({ port: server.address().port }) + '\n')
})
process.on('SIGTERM', () => process.exit(0))
