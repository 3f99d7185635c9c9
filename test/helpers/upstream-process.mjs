// A tiny upstream app in its own process, so a test can kill it (SIGKILL: no goodbye) and start
// it again on the same port. Usage: node upstream-process.mjs <name> [port]
// Prints {"port":N} once listening. Answers every request with {"name":...} after reading the body;
// GET /up answers 200 unless the file named by UNHEALTHY_FILE exists. Requests to HOLD_PATH are
// never answered (they stay in flight until the process dies); each prints {"held":N}.
// With STANDBY=1 it prints {"standby":true} and binds only when a line arrives on stdin, so a test
// can start the replacement of a process it is about to kill and have the port served again within
// a millisecond of the kill, however slow process start-up is on the machine.
import { existsSync } from 'node:fs'
import { createServer } from 'node:http'

const [name = 'app', port = '0'] = process.argv.slice(2)
let held = 0
const server = createServer((req, res) => {
  if (process.env.HOLD_PATH !== undefined && req.url === process.env.HOLD_PATH) {
    process.stdout.write(JSON.stringify({ held: ++held }) + '\n')
    return
  }
  if (req.url === '/up') {
    const unhealthy = process.env.UNHEALTHY_FILE !== undefined && existsSync(process.env.UNHEALTHY_FILE)
    res.writeHead(unhealthy ? 503 : 200, { 'content-type': 'text/plain' })
    res.end(unhealthy ? 'unhealthy\n' : 'ok\n')
    return
  }
  let bytes = 0
  req.on('data', (c) => { bytes += c.length })
  req.on('end', () => {
    res.writeHead(200, { 'content-type': 'application/json' })
    res.end(JSON.stringify({ name, method: req.method, bytes }))
  })
})
server.keepAliveTimeout = 60_000
const listen = () => server.listen(Number(port), '127.0.0.1', () => {
  process.stdout.write(JSON.stringify({ port: server.address().port }) + '\n')
})
if (process.env.STANDBY === '1') {
  process.stdin.once('data', listen)
  process.stdout.write(JSON.stringify({ standby: true }) + '\n')
} else {
  listen()
}
process.on('SIGTERM', () => server.close(() => process.exit(0)))
