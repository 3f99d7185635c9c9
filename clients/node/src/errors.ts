/**
 * Errors of the verifier. A refused descriptor is a DescriptorError with a stable `reason` (the
 * codes of docs/descriptor.md and test/fixtures/descriptor-vectors.json, shared with the Ruby and
 * Python verifiers) and the HTTP status a middleware answers with. A mistake in the verifier's own
 * settings is a VerifierConfigError: a bug to fix, never a refusal of the request.
 */

/** Reason codes of the ordered checks, in the order docs/descriptor.md runs them. */
export const DESCRIPTOR_REASONS = ['malformed', 'comma', 'too_large', 'typ', 'forbidden_header', 'unknown_kid', 'alg', 'bad_signature', 'version', 'issuer', 'audience', 'claims', 'expired', 'not_yet_valid', 'host_mismatch'] as const

/** A reason code: one of the checks, `missing` (no header at all) or `jwks_unavailable` (no key set yet). */
export type DescriptorReason = typeof DESCRIPTOR_REASONS[number] | 'missing' | 'jwks_unavailable'

/** Reasons that describe a malformed request rather than a failed verification (HTTP 400). */
const BAD_REQUEST_REASONS: ReadonlySet<DescriptorReason> = new Set(['missing', 'malformed', 'comma', 'too_large'])

/** A refused descriptor. `code` is the tenant-proxy error code of the same refusal (docs/errors.md). */
export class DescriptorError extends Error {
  readonly reason: DescriptorReason
  readonly code: 'TENANT_PROXY_ERR_DESCRIPTOR_MISSING' | 'TENANT_PROXY_ERR_DESCRIPTOR_INVALID' | 'TENANT_PROXY_ERR_JWKS_UNAVAILABLE'

  constructor (reason: DescriptorReason, detail: string, options?: { cause?: unknown }) {
    super(reason === 'jwks_unavailable' ? `descriptor key set unavailable: ${detail}` : reason === 'missing' ? `descriptor missing: ${detail}` : `descriptor rejected: ${detail}`, options)
    this.name = 'DescriptorError'
    this.reason = reason
    this.code = reason === 'jwks_unavailable' ? 'TENANT_PROXY_ERR_JWKS_UNAVAILABLE' : reason === 'missing' ? 'TENANT_PROXY_ERR_DESCRIPTOR_MISSING' : 'TENANT_PROXY_ERR_DESCRIPTOR_INVALID'
  }

  /** 400 for a missing or malformed value, 503 when no key set could be loaded yet, 401 for everything else. */
  get httpStatus (): 400 | 401 | 503 {
    if (this.reason === 'jwks_unavailable') return 503
    return BAD_REQUEST_REASONS.has(this.reason) ? 400 : 401
  }
}

/** True when `err` is a refused descriptor (optionally for `reason`). */
export function isDescriptorError (err: unknown, reason?: DescriptorReason): err is DescriptorError {
  return err instanceof DescriptorError && (reason === undefined || err.reason === reason)
}

/**
 * The verifier's own settings are wrong (issuer missing, leeway over 5 s, an unreadable key, a
 * TENANT_DESCRIPTOR_* variable missing): `code` is TENANT_PROXY_ERR_CONFIG_INVALID or
 * TENANT_PROXY_ERR_KEY_INVALID, and the message names the setting, never key material.
 */
export class VerifierConfigError extends Error {
  readonly code: 'TENANT_PROXY_ERR_CONFIG_INVALID' | 'TENANT_PROXY_ERR_KEY_INVALID'

  constructor (code: VerifierConfigError['code'], message: string, options?: { cause?: unknown }) {
    super(message, options)
    this.name = 'VerifierConfigError'
    this.code = code
  }
}

export function refuse (reason: DescriptorReason, detail: string): never {
  throw new DescriptorError(reason, detail)
}
