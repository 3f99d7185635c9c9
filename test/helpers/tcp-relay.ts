/**
 * A TCP relay on 127.0.0.1:0 in front of a real server, adding a settable latency to everything
 * the server sends back: a proxy whose registry connections go through it applies registry
 * changes that much later (a slow network to the registry), without touching its code.
 */
import { createServer, connect, type Socket } from 'node:net'
import type { Test } from 'tap'

/** A running relay. */
export interface TcpRelay {
  port: number
  /** Latency added to every server → client chunk from now on (order is kept). */
  delayMs: number
  /** `url` with its host and port replaced by the relay's. */
  url (url: string): string
}

/** Starts a relay to `target` and closes it (and every relayed connection) at teardown. */
export async function startTcpRelay (t: Test, target: { host: string, port: number }): Promise<TcpRelay> {
  const sockets = new Set<Socket>()
  const relay: TcpRelay = {
    port: 0,
    delayMs: 0,
    url (url) {
      const u = new URL(url)
      u.host = `127.0.0.1:${relay.port}`
      return u.toString()
    }
  }
  const server = createServer((client) => {
    const upstream = connect(target.port, target.host)
    for (const s of [client, upstream]) {
      sockets.add(s)
      s.on('error', () => {})
      s.on('close', () => {
        sockets.delete(s)
        client.destroy()
        upstream.destroy()
      })
    }
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
    await new Promise((resolve) => server.close(resolve))
  })
  return relay
}
