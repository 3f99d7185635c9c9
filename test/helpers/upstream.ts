/**
 * A real upstream HTTP server for tests: records what it receives and answers with it as JSON.
 */
import { createServer, type IncomingHttpHeaders, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'

/** One request as the upstream saw it. */
export interface SeenRequest {
  method: string
  url: string
  headers: IncomingHttpHeaders
  rawHeaders: string[]
  bodyBytes: number
}

/** A running upstream. */
export interface TestUpstream {
  origin: string
  port: number
  server: Server
  seen: SeenRequest[]
  close (): Promise<void>
}

type Handler = (req: IncomingMessage, res: ServerResponse, seen: SeenRequest) => void

/** Starts an upstream on 127.0.0.1:0; the default handler echoes the request as JSON once the body is read. */
export async function startUpstream (t: { teardown (fn: () => Promise<void> | void): void }, handler?: Handler): Promise<TestUpstream> {
  const seen: SeenRequest[] = []
  const server = createServer((req, res) => {
    const entry: SeenRequest = { method: req.method ?? '', url: req.url ?? '', headers: req.headers, rawHeaders: req.rawHeaders, bodyBytes: 0 }
    seen.push(entry)
    if (handler !== undefined) {
      handler(req, res, entry)
      return
    }
    req.on('data', (chunk: Buffer) => { entry.bodyBytes += chunk.length })
    req.on('end', () => {
      res.writeHead(200, { 'content-type': 'application/json', 'x-tenant-descriptor': 'echoed-by-a-careless-app' })
      res.end(JSON.stringify(entry))
    })
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const port = (server.address() as AddressInfo).port
  const close = async (): Promise<void> => await new Promise<void>((resolve) => {
    server.closeAllConnections()
    server.close(() => resolve())
  })
  t.teardown(close)
  return { origin: `http://127.0.0.1:${port}`, port, server, seen, close }
}
