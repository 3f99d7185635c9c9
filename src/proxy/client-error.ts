/**
 * Connections whose bytes Node's HTTP parser refused, or whose header section arrived too slowly,
 * end here (the server's 'clientError' event) before any request object exists. Both listeners use
 * this handler instead of Fastify's default, which logs the whole error at `trace`, and Node's
 * parser errors carry the received bytes as `err.rawPacket`: the client's Authorization, Cookie
 * and any descriptor it replays. This one logs the error code, the parser's byte offset and the
 * number of bytes received, never the bytes, and answers the way Node itself does
 * (lib/_http_server.js socketOnError): 431, 413, 408 or 400, then closes the connection.
 */
import { STATUS_CODES } from 'node:http'
import type { Socket } from 'node:net'
import type { Logger } from 'pino'
import { ERRORS } from '../errors.js'

/**
 * What Node hands the 'clientError' listener: llhttp errors add code, reason, bytesParsed and
 * rawPacket (a Buffer at run time, whatever Fastify's ConnectionError type says).
 */
export interface ClientError extends Error {
  code?: string
  reason?: unknown
  bytesParsed?: unknown
  rawPacket?: unknown
}

/** Fastify's `clientErrorHandler` for a listener logging to `logger`. */
export function clientErrorHandler (logger: Logger): (err: ClientError, socket: Socket) => void {
  return (err, socket) => {
    const code = typeof err.code === 'string' ? err.code : 'UNKNOWN'
    // The peer reset the connection: nothing to answer, and nothing unusual to tell.
    if (code === 'ECONNRESET' || socket.destroyed) return
    const { status, detail } = answerFor(code)
    logger.debug({
      code,
      reason: typeof err.reason === 'string' ? err.reason.replace(/[^\x20-\x7e]/g, '?').slice(0, 100) : undefined,
      bytesParsed: typeof err.bytesParsed === 'number' ? err.bytesParsed : undefined,
      bytes: ArrayBuffer.isView(err.rawPacket) ? err.rawPacket.byteLength : undefined,
      status,
      peer: socket.remoteAddress
    }, 'client error: connection refused before a request was read')
    // As Node does: answer only if no response has started on this connection, or the client
    // would read our bytes in the middle of another answer.
    const inFlight = (socket as Socket & { _httpMessage?: { headersSent?: boolean } | null })._httpMessage
    if (socket.writable && (inFlight === undefined || inFlight === null || inFlight.headersSent !== true)) {
      socket.write(response(status, detail))
    }
    socket.destroy()
  }
}

function answerFor (code: string): { status: number, detail: string } {
  switch (code) {
    case 'HPE_HEADER_OVERFLOW': return { status: 431, detail: 'the request header section is larger than this proxy accepts' }
    case 'HPE_CHUNK_EXTENSIONS_OVERFLOW': return { status: 413, detail: 'the chunk extensions are larger than this proxy accepts' }
    case 'ERR_HTTP_REQUEST_TIMEOUT': return { status: 408, detail: 'the request header section did not arrive in time' }
    default: return { status: 400, detail: `malformed HTTP request (${code})` }
  }
}

/** The catalogue's JSON error body (as src/proxy/error-reply.ts sends it), with Connection: close. */
function response (status: number, detail: string): string {
  const code = 'TENANT_PROXY_ERR_BAD_REQUEST'
  const message = ERRORS[code].message.replace('%s', detail)
  const body = JSON.stringify({ error: { code, message, status }, requestId: null }) + '\n'
  return `HTTP/1.1 ${status} ${STATUS_CODES[status] ?? 'Error'}\r\n` +
    'Content-Type: application/json; charset=utf-8\r\n' +
    `Content-Length: ${Buffer.byteLength(body)}\r\n` +
    'Cache-Control: no-store\r\n' +
    'Connection: close\r\n\r\n' + body
}
