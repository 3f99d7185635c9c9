// Benchmark upstream: the smallest useful HTTP app, so the proxies' costs dominate.
import { createServer } from 'node:http'

const body = Buffer.from('{"ok":true}\n')
const server = createServer((req, res) => {
  req.resume()
  res.writeHead(200, { 'content-type': 'application/json', 'content-length': body.length })
  res.end(body)
})
server.keepAliveTimeout = 72_000
server.listen(0, '127.0.0.1', () => {
  process.stdout.write(JSON.stringify({ port: server.address().port }) + '\n')
})
process.on('SIGTERM', () => process.exit(0))
