/**
 * Sends hand-written HTTP/1.1 over a real socket: for requests no well-behaved client library
 * would send (duplicate or underscore descriptor headers, absolute-form targets, bad hosts).
 */
import { connect } from 'node:net'

/** A parsed response. */
export interface RawResponse { status: number, headers: Record<string, string>, body: string, head: string }

/**
 * Writes `request` (use \r\n line ends and Connection: close) and reads the whole response.
 * `from` picks the client's loopback address (any of 127.0.0.0/8), to be a trusted or an
 * untrusted peer.
 */
export async function rawRequest (port: number, request: string, opts: { from?: string } = {}): Promise<RawResponse> {
  return await new Promise((resolve, reject) => {
    const socket = connect({ port, host: '127.0.0.1', ...(opts.from === undefined ? {} : { localAddress: opts.from }) })
    const chunks: Buffer[] = []
    socket.setTimeout(10_000, () => socket.destroy(new Error('raw request timed out')))
    socket.on('data', (c: Buffer) => chunks.push(c))
    socket.on('error', reject)
    socket.on('close', () => {
      const text = Buffer.concat(chunks).toString('latin1')
      const split = text.indexOf('\r\n\r\n')
      const head = split === -1 ? text : text.slice(0, split)
      let body = split === -1 ? '' : text.slice(split + 4)
      const [statusLine = '', ...lines] = head.split('\r\n')
      const headers: Record<string, string> = {}
      for (const line of lines) {
        const i = line.indexOf(':')
        if (i > 0) headers[line.slice(0, i).toLowerCase()] = line.slice(i + 1).trim()
      }
      if (headers['transfer-encoding'] === 'chunked') body = dechunk(body)
      resolve({ status: Number(statusLine.split(' ')[1]), headers, body, head })
    })
    socket.write(request)
  })
}

function dechunk (body: string): string {
  let out = ''
  let rest = body
  for (;;) {
    const eol = rest.indexOf('\r\n')
    if (eol === -1) return out
    const size = parseInt(rest.slice(0, eol), 16)
    if (!(size > 0)) return out
    out += rest.slice(eol + 2, eol + 2 + size)
    rest = rest.slice(eol + 2 + size + 2)
  }
}
