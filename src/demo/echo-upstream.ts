/**
 * The demo's upstream app: verifies the descriptor on every request, as a real app would, and
 * answers with its claims as JSON, so `curl` shows which database each host reaches.
 */
import { createServer, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import type { Keyring } from '../descriptor/keyring.js'
import { verifyDescriptor } from '../descriptor/verify.js'

/** Verification settings of the echo app: what a real app pins. */
export interface EchoOptions {
  keyring: Keyring
  issuer: string
  audience: string
  header: string
}

/** Starts the echo upstream on 127.0.0.1 (port 0 = any); resolves to its origin and a close function. */
export async function startEchoUpstream (opts: EchoOptions, port = 0): Promise<{ origin: string, server: Server, close (): Promise<void> }> {
  const header = opts.header.toLowerCase()
  const server = createServer((req, res) => {
    req.resume()
    const token = req.headers[header]
    const host = req.headers['x-forwarded-host'] ?? req.headers.host
    let body: Record<string, unknown>
    let status = 200
    if (typeof token !== 'string') {
      body = { verified: false, reason: `no ${opts.header} header (pass-through host or direct request)`, host }
    } else {
      try {
        const claims = verifyDescriptor(token, { keys: opts.keyring.verificationKeys, issuer: opts.issuer, audience: opts.audience, host: typeof host === 'string' ? host.split(':')[0] : undefined })
        body = { verified: true, tenant: claims.sub, database: claims.db, epoch: claims.epoch, host: claims.host, expiresAt: new Date(claims.exp * 1000).toISOString() }
      } catch (err) {
        status = 401
        body = { verified: false, reason: (err as Error).message }
      }
    }
    body.request = { method: req.method, url: req.url, requestId: req.headers['x-request-id'], forwardedFor: req.headers['x-forwarded-for'] }
    res.writeHead(status, { 'content-type': 'application/json' })
    res.end(JSON.stringify(body, null, 2) + '\n')
  })
  await new Promise<void>((resolve) => server.listen(port, '127.0.0.1', resolve))
  const address = server.address() as AddressInfo
  return {
    origin: `http://127.0.0.1:${address.port}`,
    server,
    close: async () => await new Promise<void>((resolve) => { server.closeAllConnections(); server.close(() => resolve()) })
  }
}
