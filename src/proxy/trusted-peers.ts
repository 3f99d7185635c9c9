/**
 * Which peers are trusted proxies (their X-Forwarded-* and X-Request-Id are believed).
 */
import { BlockList, isIPv4, type Socket } from 'node:net'

/** The verdict, kept on the socket: a connection's peer cannot change. */
const kTrusted = Symbol('tenant-proxy.trustedPeer')

/** Matches socket addresses against configured IPs and CIDRs. */
export class TrustedPeers {
  readonly #list = new BlockList()
  readonly #empty: boolean

  constructor (entries: readonly string[]) {
    this.#empty = entries.length === 0
    for (const entry of entries) {
      const [address = '', bits] = entry.split('/')
      const family = isIPv4(address) ? 'ipv4' : 'ipv6'
      if (bits === undefined) this.#list.addAddress(address, family)
      else this.#list.addSubnet(address, Number(bits), family)
    }
  }

  /** True when `address` (as the socket reports it) is trusted. */
  has (address: string | undefined): boolean {
    if (this.#empty || address === undefined) return false
    // Dual-stack sockets report IPv4 peers as ::ffff:a.b.c.d; match them against IPv4 entries.
    const plain = address.startsWith('::ffff:') && isIPv4(address.slice(7)) ? address.slice(7) : address
    return this.#list.check(plain, isIPv4(plain) ? 'ipv4' : 'ipv6')
  }

  /** True when the peer of `socket` is trusted; decided once per connection. */
  hasPeerOf (socket: Socket): boolean {
    const s = socket as Socket & { [kTrusted]?: boolean }
    return s[kTrusted] ??= this.has(socket.remoteAddress)
  }
}
