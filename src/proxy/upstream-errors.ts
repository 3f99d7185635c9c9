/**
 * The one classifier of upstream failures. Retries (upstream-agent.ts), passive ejection
 * (upstream-pools.ts), metrics (`kind` label) and the answer to the client all read it, so they
 * cannot disagree about what a failure was (model: fastify-reply-from lib/errors.js and the
 * single site in its index.js that maps transport errors to them).
 */
import type { ErrorCode } from '../errors.js'

/** Kinds of upstream failure, as counted in tenant_proxy_upstream_errors_total{kind}. */
export type UpstreamErrorKind = 'connect' | 'timeout' | 'reset' | 'other'

export const UPSTREAM_ERROR_KINDS: readonly UpstreamErrorKind[] = ['connect', 'timeout', 'reset', 'other']

/** What a failure was, and what follows from it. */
export interface UpstreamFailure {
  readonly kind: UpstreamErrorKind
  /** The first error code found along the `cause` chain ('' when none). */
  readonly code: string
  /**
   * The connection failed or broke: the address is suspect (ejection counts it) and the attempt
   * may be repeated on another address when that is safe for the request.
   */
  readonly connection: boolean
  /** The catalogue error the client gets when the failure reaches it. */
  readonly answer: ErrorCode
}

/** Nothing reached the app: the connection was never made (DNS, refused, unreachable, TLS). */
const CONNECT = new Set([
  'ECONNREFUSED', 'ENOTFOUND', 'EHOSTUNREACH', 'ENETUNREACH', 'EAI_AGAIN', 'ETIMEDOUT', 'UND_ERR_CONNECT_TIMEOUT',
  // TLS: the certificate did not verify, so nothing was sent.
  'ERR_TLS_CERT_ALTNAME_INVALID', 'DEPTH_ZERO_SELF_SIGNED_CERT', 'SELF_SIGNED_CERT_IN_CHAIN', 'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY', 'CERT_HAS_EXPIRED', 'CERT_NOT_YET_VALID', 'ERR_SSL_WRONG_VERSION_NUMBER'
])
/** The connection broke while the request was sent or the answer awaited. */
const RESET = new Set(['ECONNRESET', 'EPIPE', 'UND_ERR_SOCKET', 'UND_ERR_CLOSED'])
/** No answer in time: upstream.headersTimeoutMs, or upstream.bodyTimeoutMs between body chunks. */
const TIMEOUT = new Set(['UND_ERR_HEADERS_TIMEOUT', 'UND_ERR_BODY_TIMEOUT'])

const BY_KIND: Readonly<Record<UpstreamErrorKind, UpstreamFailure>> = {
  connect: { kind: 'connect', code: '', connection: true, answer: 'TENANT_PROXY_ERR_UPSTREAM_CONNECT' },
  reset: { kind: 'reset', code: '', connection: true, answer: 'TENANT_PROXY_ERR_UPSTREAM_FAILED' },
  timeout: { kind: 'timeout', code: '', connection: false, answer: 'TENANT_PROXY_ERR_UPSTREAM_TIMEOUT' },
  other: { kind: 'other', code: '', connection: false, answer: 'TENANT_PROXY_ERR_UPSTREAM_FAILED' }
}

/** Classifies an upstream error by the first code along its `cause` chain. */
export function classifyUpstreamError (err: unknown): UpstreamFailure {
  const code = errorCode(err)
  const kind: UpstreamErrorKind = CONNECT.has(code) ? 'connect' : RESET.has(code) ? 'reset' : TIMEOUT.has(code) ? 'timeout' : 'other'
  return { ...BY_KIND[kind], code }
}

/** The first `code` along an error's `cause` chain (undici wraps socket errors in its own). */
export function errorCode (err: unknown): string {
  for (let e: unknown = err, depth = 0; e !== null && typeof e === 'object' && depth < 8; e = (e as { cause?: unknown }).cause, depth++) {
    const code = (e as { code?: unknown }).code
    if (typeof code === 'string' && code !== '') {
      // undici's generic wrapper codes say less than the socket error they wrap: look deeper.
      const cause = (e as { cause?: unknown }).cause
      if (cause !== undefined && cause !== null && (code === 'UND_ERR_SOCKET' || code === 'UND_ERR_CONNECT')) {
        const inner = errorCode(cause)
        if (inner !== '') return inner
      }
      return code
    }
  }
  return ''
}

/** True when `code` appears anywhere along the `cause` chain. */
export function hasErrorCode (err: unknown, code: string): boolean {
  for (let e: unknown = err, depth = 0; e !== null && typeof e === 'object' && depth < 8; e = (e as { cause?: unknown }).cause, depth++) {
    if ((e as { code?: unknown }).code === code) return true
  }
  return false
}
