// A loopback TCP port for a server a benchmark starts, from below the kernel's ephemeral range.
// A port the kernel handed out (listen on 0) is itself ephemeral: between our close and the
// child's listen, any outgoing connection on the machine may take it as its local port, and with
// a dozen proxies opening registry and upstream connections at once that happened
// (EADDRINUSE at boot). Ports below the range are never given to outgoing connections.
import { readFileSync } from 'node:fs'
import { createServer } from 'node:net'

const FLOOR = 10_000
const ATTEMPTS = 100

function ephemeralLow () {
  try {
    const low = Number(readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/)[0])
    return Number.isInteger(low) && low > FLOOR + 1_000 ? low : 32_768
  } catch {
    return 32_768 // Linux's default range starts here
  }
}

const LOW = ephemeralLow()

/** A port on 127.0.0.1 below the ephemeral range that was free a moment ago. */
export async function freePort () {
  for (let i = 0; i < ATTEMPTS; i++) {
    const port = FLOOR + Math.floor(Math.random() * (LOW - FLOOR))
    if (await canListen(port)) return port
  }
  throw new Error(`no free port between ${FLOOR} and ${LOW} in ${ATTEMPTS} attempts`)
}

async function canListen (port) {
  return await new Promise((resolve) => {
    const server = createServer()
    server.once('error', () => resolve(false))
    server.listen(port, '127.0.0.1', () => server.close(() => resolve(true)))
  })
}
