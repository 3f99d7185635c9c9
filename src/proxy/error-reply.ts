/**
 * Error responses of the traffic listener: a small JSON body (or HTML page for browsers) carrying
 * the catalogue code, so clients, logs and runbooks all speak of the same thing.
 */
import type { FastifyReply, FastifyRequest } from 'fastify'
import { ERRORS, type ErrorCode } from '../errors.js'

/** Sends the catalogue error `code` (status from the catalogue unless given). */
export function sendError (request: FastifyRequest, reply: FastifyReply, code: ErrorCode, opts: { status?: number, detail?: string, retryAfterS?: number } = {}): FastifyReply {
  const spec = ERRORS[code]
  const status = opts.status ?? spec.status
  const message = opts.detail === undefined ? spec.message.replace(/: %s$/, '').replace(/%s/g, '') : spec.message.replace('%s', opts.detail)
  if (opts.retryAfterS !== undefined) reply.header('retry-after', String(opts.retryAfterS))
  reply.code(status).header('cache-control', 'no-store')
  if (prefersHtml(request.headers.accept)) {
    return reply.type('text/html; charset=utf-8').send(
      `<!doctype html><html><head><meta charset="utf-8"><title>${status}</title></head>` +
      `<body><h1>${escapeHtml(message)}</h1><p>Error code: <code>${code}</code><br>Request id: <code>${escapeHtml(request.id)}</code></p></body></html>\n`)
  }
  return reply.type('application/json; charset=utf-8').send(JSON.stringify({ error: { code, message, status }, requestId: request.id }) + '\n')
}

/** True when the client asks for HTML before JSON (browsers); API clients and curl get JSON. */
export function prefersHtml (accept: string | undefined): boolean {
  if (accept === undefined) return false
  const html = accept.indexOf('text/html')
  if (html === -1) return false
  const json = accept.indexOf('application/json')
  return json === -1 || html < json
}

function escapeHtml (s: string): string {
  return s.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`)
}
