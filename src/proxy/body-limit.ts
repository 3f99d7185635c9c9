/**
 * upstream.maxBodyBytes: a declared Content-Length over the limit is refused before anything is
 * forwarded; a chunked body is counted as it streams and cut off past the limit, which fails the
 * upstream request (the 413 is then sent if the app has not answered yet).
 */
import type { IncomingMessage } from 'node:http'
import { Transform, type Readable, type TransformCallback } from 'node:stream'
import { hasErrorCode } from './upstream-errors.js'

/** The code of the error a body cut off at the limit fails the upstream request with. */
export const BODY_TOO_LARGE = 'TENANT_PROXY_BODY_TOO_LARGE'

/** The body to forward, or 'too-large' when its declared length is over `limit` (0: no limit). */
export function limitedBody (req: IncomingMessage, body: Readable | null, limit: number): Readable | null | 'too-large' {
  if (limit === 0 || body === null) return body
  const declared = req.headers['content-length']
  if (declared !== undefined) return Number(declared) > limit ? 'too-large' : body
  return body.pipe(new ByteLimit(limit))
}

/** True when an upstream failure is the body limit cutting a chunked body off. */
export function isBodyTooLarge (err: unknown): boolean {
  return hasErrorCode(err, BODY_TOO_LARGE)
}

/** Passes bytes through until `limit`, then fails the stream (which aborts the upstream request). */
class ByteLimit extends Transform {
  #seen = 0
  constructor (readonly limit: number) {
    super()
  }

  override _transform (chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    this.#seen += chunk.length
    if (this.#seen > this.limit) callback(Object.assign(new Error(`request body over ${this.limit} bytes`), { code: BODY_TOO_LARGE }))
    else callback(null, chunk)
  }
}
