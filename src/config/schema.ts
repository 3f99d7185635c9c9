/**
 * The configuration schema: one field per key of config/defaults.ts, no more, no fewer (a test
 * checks both trees match). The typed `Config` is derived from it.
 */
import { isIP } from 'node:net'
import { FORWARDING_HEADER_SET } from '../proxy/forwarding-headers.js'
import { canonicalHost } from '../routing/host.js'
import {
  boolean, httpOrigin, integer, list, nullable, oneOf, port, postgresUrl, record, signingKeys, text,
  type Field
} from './fields.js'

const IDENTIFIER = /^[a-z_][a-z0-9_]{0,62}$/
const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]{0,127}$/
/** The placeholders of tenantExec.databaseUrlTemplate (src/exec/database-url.ts fills them). */
export const URL_TEMPLATE_PLACEHOLDERS = ['database', 'host', 'port', 'slug', 'user', 'password', 'userinfo'] as const
const HOUR_MS = 3_600_000
/** More processes than this is a typo, not a machine (each holds its own index). */
export const MAX_WORKERS = 256

export const SCHEMA = {
  deploymentId: text({ pattern: /^[\x21-\x7e]{1,200}$/, describe: '1-200 printable ASCII characters' }),
  log: {
    level: oneOf(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const)
  },
  workers: workerCount(),
  registry: {
    databaseUrl: nullable(postgresUrl()),
    listenUrl: nullable(postgresUrl()),
    schema: text({ pattern: IDENTIFIER, describe: 'a lower-case SQL identifier (^[a-z_][a-z0-9_]{0,62}$)' }),
    // 32, not PostgreSQL's 63: the feed connection's name adds " feed v=<version> <host>/<pid>" (src/registry/feed-name.ts).
    applicationName: text({ pattern: /^[\x20-\x7e]{1,32}$/, describe: '1-32 printable ASCII characters' }),
    connectTimeoutMs: integer(1, 600_000),
    statementTimeoutMs: integer(1, HOUR_MS),
    versionCheckIntervalMs: integer(0, 24 * HOUR_MS),
    reconnectMinMs: integer(1, 600_000),
    reconnectMaxMs: integer(1, HOUR_MS),
    unavailableRetryAfterS: integer(0, 86_400),
    snapshotPath: text({ allowEmpty: true }),
    changeRetentionS: integer(0, 10 * 365 * 86_400),
    embedded: {
      dataDir: text(),
      port: integer(1, 65_535)
    }
  },
  tenantDatabase: {
    defaultHost: text({ pattern: /^[A-Za-z0-9.:_[\]-]{1,253}$/, describe: 'a hostname or IP address' }),
    defaultPort: integer(1, 65_535),
    defaultServer: nullable(text({ pattern: /^[a-z0-9]([a-z0-9_-]{0,61}[a-z0-9])?$/, describe: 'a database server name (servers add)' })),
    psql: text({ pattern: /^[^\0]{1,4096}$/, describe: 'a command name or path' }),
    pgDump: text({ pattern: /^[^\0]{1,4096}$/, describe: 'a command name or path' }),
    pgRestore: text({ pattern: /^[^\0]{1,4096}$/, describe: 'a command name or path' })
  },
  tenantExec: {
    databaseUrlTemplate: urlTemplate(),
    userEnv: text({ pattern: ENV_NAME, describe: 'an environment variable name' }),
    passwordEnv: text({ pattern: ENV_NAME, describe: 'an environment variable name' }),
    runDirectory: text()
  },
  doctor: {
    ignoreDatabases: list(text({ pattern: /^[A-Za-z0-9_$*-]{1,63}$/, describe: 'a database name, * matching any characters' })),
    concurrency: integer(1, 256)
  },
  traffic: {
    host: ipAddress(),
    port: port(),
    healthPath: text({ pattern: /^\/[A-Za-z0-9._~!$&'()*+,;=:@/-]*$/, describe: 'an absolute URL path such as /up' }),
    // No ':' or '*': the router reads them as a parameter and a wildcard.
    tlsAskPath: text({ allowEmpty: true, pattern: /^(\/[A-Za-z0-9._~!$&'()+,;=@/-]*)?$/, describe: 'an absolute URL path such as /.well-known/tenant-proxy/tls-ask (without ":" or "*"), or empty' }),
    trustedProxies: list(ipOrCidr()),
    trustedForwardedHeaders: list(forwardingHeader()),
    hostFromForwardedHost: boolean(),
    allowUnderscoresInHeaders: boolean(),
    keepAliveTimeoutMs: integer(1, HOUR_MS),
    requestHeadersTimeoutMs: integer(1, HOUR_MS),
    maxHeaderBytes: integer(1_024, 1_048_576),
    healthMode: oneOf(['registry', 'upstream'] as const)
  },
  ops: {
    host: ipAddress(),
    port: port(),
    descriptorApi: {
      // RFC 6750 section 2.1's b64token, so every token can be sent as `Authorization: Bearer <token>`
      // (and no token contains the comma that separates a list in the environment).
      tokens: list(text({ secret: true, pattern: /^(?=.{32,512}$)[A-Za-z0-9._~+/-]+=*$/, describe: '32-512 characters of A-Z a-z 0-9 - . _ ~ + / with optional trailing = (a bearer token such as the output of `openssl rand -hex 32`)' }))
    }
  },
  routing: {
    wwwFallback: boolean(),
    wildcardDomains: list(hostname()),
    reservedLabels: list(text({ pattern: /^[a-z0-9-]{1,63}$/, describe: 'a lower-case DNS label' })),
    passthroughHosts: list(hostname()),
    maintenanceRetryAfterS: integer(0, 86_400),
    pause: {
      maxHeldPerTenant: integer(0, 1_000_000),
      maxHeld: integer(0, 1_000_000),
      retryAfterS: integer(0, 86_400)
    }
  },
  descriptor: {
    header: text({ pattern: /^[A-Za-z0-9-]{1,64}$/, describe: 'an HTTP header name of letters, digits and hyphens' }),
    audience: text({ pattern: /^[\x21-\x7e]{1,200}$/, describe: '1-200 printable ASCII characters' }),
    ttlS: integer(5, 86_400),
    refreshMarginS: integer(1, 86_399),
    keys: signingKeys()
  },
  upstream: {
    urls: list(httpOrigin(), { minItems: 1 }),
    pools: record(/^[a-z0-9][a-z0-9_-]{0,62}$/, list(httpOrigin(), { minItems: 1 })),
    hostHeader: nullable(hostname()),
    connectTimeoutMs: integer(1, 600_000),
    headersTimeoutMs: integer(1, HOUR_MS),
    bodyTimeoutMs: integer(1, 24 * HOUR_MS),
    connections: integer(1, 65_536),
    maxBodyBytes: integer(0, Number.MAX_SAFE_INTEGER),
    dnsRefreshMs: integer(0, HOUR_MS),
    ejectAfterFailures: integer(1, 1_000),
    ejectMinMs: integer(1, HOUR_MS),
    ejectMaxMs: integer(1, 24 * HOUR_MS),
    healthCheck: {
      path: text({ allowEmpty: true, pattern: /^(\/[A-Za-z0-9._~!$&'()*+,;=:@/?-]*)?$/, describe: 'an absolute URL path such as /up, or empty' }),
      intervalMs: integer(100, HOUR_MS),
      timeoutMs: integer(1, 600_000),
      cacheMs: integer(0, 600_000)
    }
  },
  shutdown: {
    drainDelayMs: integer(0, 600_000),
    graceMs: integer(0, HOUR_MS)
  }
}

/** A tree of schema fields. */
export interface SchemaTree { readonly [key: string]: Field<unknown> | SchemaTree }

type ConfigOf<S> = { readonly [K in keyof S]: S[K] extends Field<infer T> ? T : ConfigOf<S[K]> }

/** The validated, frozen configuration passed down from main. */
export type Config = ConfigOf<typeof SCHEMA>

/** True when a schema node is a leaf field. */
export function isField (node: Field<unknown> | SchemaTree): node is Field<unknown> {
  return typeof (node as Partial<Field<unknown>>).check === 'function'
}

/** Checks between keys that a single field cannot see; returns [path, reason] pairs. */
export function crossChecks (config: Config): Array<[string, string]> {
  const problems: Array<[string, string]> = []
  if (config.descriptor.refreshMarginS >= config.descriptor.ttlS) {
    problems.push(['descriptor.refreshMarginS', `must be less than descriptor.ttlS (${config.descriptor.ttlS})`])
  }
  if (config.traffic.port !== 0 && config.traffic.port === config.ops.port && config.traffic.host === config.ops.host) {
    problems.push(['ops.port', 'must differ from traffic.port: ops endpoints are never served on the traffic listener'])
  }
  const healthPath = config.traffic.healthPath
  if (healthPath.includes('//') || healthPath.split('/').some((s) => s === '.' || s === '..')) {
    problems.push(['traffic.healthPath', 'must not contain empty, "." or ".." segments'])
  }
  const tlsAskPath = config.traffic.tlsAskPath
  if (tlsAskPath !== '' && (tlsAskPath.includes('//') || tlsAskPath.split('/').some((s) => s === '.' || s === '..'))) {
    problems.push(['traffic.tlsAskPath', 'must not contain empty, "." or ".." segments'])
  }
  if (tlsAskPath !== '' && tlsAskPath === healthPath) problems.push(['traffic.tlsAskPath', 'must differ from traffic.healthPath'])
  if (config.traffic.healthMode === 'upstream' && config.upstream.healthCheck.path === '') {
    problems.push(['traffic.healthMode', 'is "upstream", which needs upstream.healthCheck.path (the app\'s own health path, e.g. /up)'])
  }
  if (config.traffic.hostFromForwardedHost) {
    if (config.traffic.trustedProxies.length === 0) problems.push(['traffic.hostFromForwardedHost', 'is true, which needs traffic.trustedProxies (X-Forwarded-Host is only read from them)'])
  }
  if (config.upstream.ejectMaxMs < config.upstream.ejectMinMs) {
    problems.push(['upstream.ejectMaxMs', `must be at least upstream.ejectMinMs (${config.upstream.ejectMinMs})`])
  }
  if (config.upstream.healthCheck.timeoutMs >= config.upstream.healthCheck.intervalMs) {
    problems.push(['upstream.healthCheck.timeoutMs', `must be less than upstream.healthCheck.intervalMs (${config.upstream.healthCheck.intervalMs})`])
  }
  return problems
}

function hostname (): Field<string> {
  return {
    env: 'text',
    secret: false,
    check (value) {
      if (typeof value !== 'string') return { ok: false, reason: 'must be a hostname string' }
      const r = canonicalHost(value)
      return r.ok ? { ok: true, value: r.host } : { ok: false, reason: `must be a hostname (${r.reason})` }
    }
  }
}

/** A forwarding header name (src/proxy/forwarding-headers.ts), in any case; lower-cased. */
function forwardingHeader (): Field<string> {
  return {
    env: 'text',
    secret: false,
    check (value) {
      if (typeof value !== 'string') return { ok: false, reason: 'must be a header name' }
      const name = value.trim().toLowerCase()
      if (name === 'x-forwarded-host') return { ok: false, reason: 'must not be X-Forwarded-Host: it always names the host the tenant was chosen for (set traffic.hostFromForwardedHost to choose the tenant from a trusted proxy\'s X-Forwarded-Host)' }
      return FORWARDING_HEADER_SET.has(name)
        ? { ok: true, value: name }
        : { ok: false, reason: `must be one of the forwarding headers tenant-proxy filters (docs/operations.md, "Forwarding headers"); ${JSON.stringify(value)} is not` }
    }
  }
}

/** tenantExec.databaseUrlTemplate: text whose `{…}` are all known placeholders. */
function urlTemplate (): Field<string> {
  const inner = text()
  return {
    ...inner,
    check (value) {
      const r = inner.check(value)
      if (!r.ok) return r
      const unknown = [...r.value.matchAll(/\{([^}]*)\}/g)].map((m) => m[1] ?? '').filter((p) => !(URL_TEMPLATE_PLACEHOLDERS as readonly string[]).includes(p))
      if (unknown.length > 0) return { ok: false, reason: `unknown placeholder(s) ${unknown.map((p) => `{${p}}`).join(', ')}; use ${URL_TEMPLATE_PLACEHOLDERS.map((p) => `{${p}}`).join(' ')}` }
      if (!r.value.includes('{database}')) return { ok: false, reason: 'must contain {database}' }
      return r
    }
  }
}

/** `workers`: a process count, or 'auto' (resolved at start by `serve`). */
function workerCount (): Field<number | 'auto'> {
  const count = integer(1, MAX_WORKERS)
  return {
    env: 'number',
    secret: false,
    check (value) {
      if (value === 'auto') return { ok: true, value }
      const r = count.check(value)
      return r.ok ? r : { ok: false, reason: `must be "auto" or an integer from 1 to ${MAX_WORKERS}` }
    }
  }
}

function ipAddress (): Field<string> {
  return {
    env: 'text',
    secret: false,
    check (value) {
      return typeof value === 'string' && isIP(value) !== 0
        ? { ok: true, value }
        : { ok: false, reason: 'must be an IPv4 or IPv6 address' }
    }
  }
}

function ipOrCidr (): Field<string> {
  return {
    env: 'text',
    secret: false,
    check (value) {
      if (typeof value !== 'string') return { ok: false, reason: 'must be an IP address or CIDR' }
      const [address = '', bits, extra] = value.split('/')
      const family = isIP(address)
      const max = family === 4 ? 32 : 128
      const prefixOk = bits === undefined || (/^\d{1,3}$/.test(bits) && Number(bits) <= max)
      return family !== 0 && prefixOk && extra === undefined
        ? { ok: true, value }
        : { ok: false, reason: `must be an IP address or CIDR such as 10.0.0.0/8 (got ${JSON.stringify(value)})` }
    }
  }
}
