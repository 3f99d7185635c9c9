/**
 * A TCP relay on 127.0.0.1:0 in front of a real server, adding a settable latency to everything
 * the server sends back: a proxy whose registry connections go through it applies registry
 * changes that much later (a slow network to the registry), without touching its code. It also
 * counts the bytes it relays (did the proxy talk to its registry at all?) and can cut every
 * connection (the registry gone, as the proxy sees it).
 */
import { createServer, connect, type Socket } from 'node:net'
import type { Test } from 'tap'

/** A running relay. */
export interface TcpRelay {
  port: number
  /** Latency added to every server → client chunk from now on (order is kept). */
  delayMs: number
  /** Bytes relayed so far, client → server and server → client. */
  readonly bytes: { toServer: number, toClient: number }
  /** Every connection relayed so far, in order, with its bytes and whether it is still open. */
  readonly connections: Array<{ toServer: number, toClient: number, open: boolean }>
  /** `url` with its host and port replaced by the relay's. */
  url (url: string): string
  /** Ends every relayed connection and refuses new ones: the server is gone, as the client sees it. */
  cut (): Promise<void>
}

/** Starts a relay to `target` and closes it (and every relayed connection) at teardown. */
export async function startTcpRelay (t: Test, target: { host: string, port: number }): Promise<TcpRelay> {
  const sockets = new Set<Socket>()
  const relay: TcpRelay = {
    port: 0,
    delayMs: 0,
    bytes: { toServer: 0, toClient: 0 },
    connections: [],
    url (url) {
      const u = new URL(url)
      u.host = `127.0.0.1:${relay.port}`
      return u.toString()
    },
    async cut () {
      const closed = new Promise((resolve) => server.close(resolve))
      for (const s of sockets) s.destroy()
      await closed
    }
  }
  const server = createServer((client) => {
    const upstream = connect(target.port, target.host)
    const counts = { toServer: 0, toClient: 0, open: true }
    relay.connections.push(counts)
    client.on('close', () => { counts.open = false })
    for (const s of [client, upstream]) {
      sockets.add(s)
      s.on('error', () => {})
      s.on('close', () => {
        sockets.delete(s)
        client.destroy()
        upstream.destroy()
      })
    }
    client.on('data', (chunk: Buffer) => {
      relay.bytes.toServer += chunk.length
      counts.toServer += chunk.length
    })
    client.pipe(upstream)
    // One FIFO per connection with one timer: chunks leave in the order they came, each no
    // earlier than its own due time.
    const queue: Array<{ due: number, chunk: Buffer }> = []
    let timer: NodeJS.Timeout | null = null
    const pump = (): void => {
      timer = null
      while (queue.length > 0 && (queue[0]?.due ?? 0) <= Date.now()) client.write(queue.shift()?.chunk ?? Buffer.alloc(0))
      const next = queue[0]
      if (next !== undefined) timer = setTimeout(pump, next.due - Date.now())
    }
    upstream.on('data', (chunk: Buffer) => {
      relay.bytes.toClient += chunk.length
      counts.toClient += chunk.length
      queue.push({ due: Date.now() + relay.delayMs, chunk })
      if (timer === null) pump()
    })
    client.on('close', () => { if (timer !== null) clearTimeout(timer) })
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const address = server.address()
  relay.port = typeof address === 'object' && address !== null ? address.port : 0
  t.teardown(async () => {
    for (const s of sockets) s.destroy()
    if (server.listening) await new Promise((resolve) => server.close(resolve))
  })
  return relay
}
