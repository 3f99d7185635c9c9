// A stand-in for a Rails app in the in-image entry script tests: listens on 127.0.0.1:$PORT (after
// STAND_IN_BOOT_MS, like an app that takes a while to boot; never with STAND_IN_NO_LISTEN=1),
// answers every request with what it received (GET /slow?ms=N after N ms, like a slow action),
// and stops cleanly on SIGTERM, STAND_IN_STOP_MS after its last connection closed (the time a
// real server takes to shut down).
import { createServer } from 'node:http'
import { setInterval, setTimeout } from 'node:timers'

const port = Number(process.env.PORT)
const stopMs = Number(process.env.STAND_IN_STOP_MS ?? 0)
const server = createServer((req, res) => {
  req.resume()
  const url = new URL(req.url ?? '/', 'http://stand-in')
  const answer = () => {
    res.writeHead(200, { 'content-type': 'application/json' })
    res.end(JSON.stringify({ app: 'stand-in', pid: process.pid, url: req.url, host: req.headers.host, descriptor: req.headers['x-tenant-descriptor'] ?? null }))
  }
  if (url.pathname === '/slow') {
    console.log(`stand-in app request ${req.url}`)
    const timer = setTimeout(answer, Number(url.searchParams.get('ms') ?? 0))
    res.once('close', () => clearTimeout(timer))
  } else {
    answer()
  }
})
process.on('SIGTERM', () => {
  console.log('stand-in app got SIGTERM')
  server.closeIdleConnections()
  server.close(() => setTimeout(() => process.exit(0), stopMs))
})
console.log(`stand-in app starting pid=${process.pid}`)
if (process.env.STAND_IN_NO_LISTEN !== '1') {
  setTimeout(() => {
    server.listen(port, '127.0.0.1', () => console.log(`stand-in app listening pid=${process.pid} port=${port}`))
  }, Number(process.env.STAND_IN_BOOT_MS ?? 0))
} else {
  // Keep the process alive without listening.
  setInterval(() => {}, 60_000)
}
