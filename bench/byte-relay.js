// TCP relay for bench/fleet.js: the proxies reach the registry through it, so the bytes the
// registry sends them can be counted from outside (PostgreSQL has no per-connection byte counter).
// A process of its own, so relaying never waits on the benchmark's event loop.
//
//   node bench/byte-relay.js <target port>   → prints {"port": <listening port>} on stdout
//   then each line "stats" on stdin          → prints {"toServer", "toClient", "accepted", "open"}
//
// When the server closes a connection (a registry restart) the client's side is ended too; while
// the server refuses connections, an accepted client is closed at once, as a refused connect.
import { connect, createServer } from 'node:net'
import { createInterface } from 'node:readline'

const target = Number(process.argv[2])
if (!Number.isInteger(target) || target <= 0) throw new Error('usage: node bench/byte-relay.js <target port>')
const stats = { toServer: 0, toClient: 0, accepted: 0, open: 0 }

const server = createServer((client) => {
  stats.accepted++
  stats.open++
  const upstream = connect(target, '127.0.0.1')
  client.setNoDelay(true)
  upstream.setNoDelay(true)
  let closed = false
  const close = () => {
    if (closed) return
    closed = true
    stats.open--
    client.destroy()
    upstream.destroy()
  }
  // pipe() keeps backpressure (a proxy reading a big load slowly holds the server back, as without
  // the relay) and passes half-closes on; the extra listeners only count.
  client.on('data', (chunk) => { stats.toServer += chunk.length })
  upstream.on('data', (chunk) => { stats.toClient += chunk.length })
  client.pipe(upstream)
  upstream.pipe(client)
  for (const s of [client, upstream]) {
    s.on('error', close)
    s.on('close', close)
  }
})
server.listen(0, '127.0.0.1', () => {
  process.stdout.write(JSON.stringify({ port: server.address().port }) + '\n')
})
createInterface({ input: process.stdin }).on('line', (line) => {
  if (line.trim() === 'stats') process.stdout.write(JSON.stringify(stats) + '\n')
})
process.stdin.on('end', () => process.exit(0))
process.on('SIGTERM', () => process.exit(0))
