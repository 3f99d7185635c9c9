/**
 * A TCP relay in front of PostgreSQL that can drop NotificationResponse messages, as PgBouncer in
 * transaction mode effectively does: the connection stays up, LISTEN succeeds, queries answer,
 * and no notification ever arrives. It parses the server's message framing (one type byte and an
 * int32 length that counts itself, https://www.postgresql.org/docs/current/protocol-overview.html)
 * and forwards every message but the 'A' ones while `dropNotifications` is set. Plain connections
 * only (sslmode disable): an SSLRequest's one-byte answer has no framing.
 */
import { connect, createServer, type Socket } from 'node:net'
import type { Test } from 'tap'

/** A running filter. */
export interface NotificationFilter {
  port: number
  /** Drop NotificationResponse messages from now on (true), or forward them (false). */
  dropNotifications: boolean
  /** Notifications dropped and forwarded so far. */
  readonly counts: { dropped: number, forwarded: number }
  /** `url` with its host and port replaced by the filter's. */
  url (url: string): string
}

const HEADER = 5
const NOTIFICATION = 0x41 // 'A'

/** Starts a filter to `target` and closes it (and every connection through it) at teardown. */
export async function startNotificationFilter (t: Test, target: { host: string, port: number }, opts: { dropNotifications?: boolean } = {}): Promise<NotificationFilter> {
  const sockets = new Set<Socket>()
  const filter: NotificationFilter = {
    port: 0,
    dropNotifications: opts.dropNotifications ?? true,
    counts: { dropped: 0, forwarded: 0 },
    url (url) {
      const u = new URL(url)
      u.host = `127.0.0.1:${filter.port}`
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
    // Server → client: whole messages only; a partial one waits for the rest of its bytes.
    let pending: Buffer = Buffer.alloc(0)
    upstream.on('data', (chunk: Buffer) => {
      pending = pending.length === 0 ? chunk : Buffer.concat([pending, chunk])
      const keep: Buffer[] = []
      let at = 0
      while (pending.length - at >= HEADER) {
        const size = 1 + pending.readInt32BE(at + 1)
        if (pending.length - at < size) break
        const message = pending.subarray(at, at + size)
        if (message[0] === NOTIFICATION && filter.dropNotifications) filter.counts.dropped++
        else {
          if (message[0] === NOTIFICATION) filter.counts.forwarded++
          keep.push(message)
        }
        at += size
      }
      pending = pending.subarray(at)
      if (keep.length > 0) client.write(keep.length === 1 ? keep[0] as Buffer : Buffer.concat(keep))
    })
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const address = server.address()
  filter.port = typeof address === 'object' && address !== null ? address.port : 0
  t.teardown(async () => {
    for (const s of sockets) s.destroy()
    if (server.listening) await new Promise((resolve) => server.close(resolve))
  })
  return filter
}
