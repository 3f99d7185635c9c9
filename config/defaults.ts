/**
 * Every configuration key of tenant-proxy with its default value and unit.
 *
 * Override order (later wins): these defaults, the JSON config file (`--config` or
 * TENANT_PROXY_CONFIG), then environment variables. A key's environment variable is its path in
 * SCREAMING_SNAKE_CASE behind `TENANT_PROXY_` (`traffic.port` → TENANT_PROXY_TRAFFIC_PORT); every
 * variable may instead name a file with `_FILE` appended (Docker/Kamal secrets). Lists take JSON
 * or comma-separated values; objects take JSON. REGISTRY_DATABASE_URL is accepted as an alias of
 * TENANT_PROXY_REGISTRY_DATABASE_URL. Keys marked (secret) are never logged.
 */
export const DEFAULTS = {
  /** Names this deployment; the descriptor's `iss` claim. Text. */
  deploymentId: 'tenant-proxy',

  log: {
    /** pino level: fatal, error, warn, info, debug, trace or silent. */
    level: 'info'
  },

  registry: {
    /** (secret) postgres:// URL of the tenant registry; null starts the embedded PostgreSQL. */
    databaseUrl: null as string | null,
    /**
     * (secret) postgres:// URL of the change feed's LISTEN connection, straight to PostgreSQL when
     * databaseUrl goes through a pooler in transaction mode (which loses notifications); null: databaseUrl.
     */
    listenUrl: null as string | null,
    /** PostgreSQL schema holding the registry tables. Identifier. */
    schema: 'tenant_proxy',
    /** application_name of registry connections, so `pg_stat_activity` shows the proxies. Text, 1-32 printable ASCII characters. */
    applicationName: 'tenant-proxy',
    /** Give up connecting to the registry after this long. Milliseconds. */
    connectTimeoutMs: 5_000, // 5 seconds
    /** Abort a registry statement after this long. Milliseconds. */
    statementTimeoutMs: 15_000, // 15 seconds
    /**
     * Period of the check that the index is at the registry's version (heals a lost notification
     * or a silently dead connection); 0 disables. Changes normally arrive by LISTEN/NOTIFY at once. Milliseconds.
     */
    versionCheckIntervalMs: 30_000, // 30 seconds
    /** First delay before reconnecting the change feed; doubles per failure, with jitter. Milliseconds. */
    reconnectMinMs: 250,
    /** Longest delay between change feed reconnection attempts. Milliseconds. */
    reconnectMaxMs: 30_000, // 30 seconds
    /** Retry-After sent with 503 for hosts that cannot be checked while the registry is unreachable. Seconds. */
    unavailableRetryAfterS: 5,
    /**
     * Last-known-good snapshot file, rewritten (atomically) after every load or change; a proxy
     * starting while the registry is down routes from it. Empty disables. Path.
     */
    snapshotPath: './data/last-known-good.json',
    /** Change log rows older than this are pruned (hourly, by one proxy at a time, or `registry prune`); 0 keeps them forever. Seconds. */
    changeRetentionS: 604_800, // 7 days
    /**
     * Full loads (the whole registry read) running at once across every proxy of the registry,
     * counted with advisory locks; a proxy over the cap waits (with jitter), routing from the
     * index it has. 0: no cap. Loads.
     */
    maxConcurrentFullLoads: 4,
    /** Rows per page of a full load (each page one short statement). Rows. */
    snapshotPageSize: 2_000,
    embedded: {
      /** Data directory of the embedded PostgreSQL (relative to the working directory). Path. */
      dataDir: './data/registry',
      /** Loopback TCP port of the embedded PostgreSQL. Port number. */
      port: 54329
    }
  },

  tenantDatabase: {
    /** Database server of tenants whose database host is null in the registry. Hostname. */
    defaultHost: 'localhost',
    /** Port of that server. Port number. */
    defaultPort: 5432,
    /**
     * Registry database server (`servers add`) of tenants created or added without --server,
     * --db-host or --db-port; null: such tenants live on defaultHost/defaultPort, and
     * `tenants create` needs --server. Server name.
     */
    defaultServer: null as string | null,
    /** psql that loads `tenants create --schema-file` files (looked up in PATH). Command. */
    psql: 'psql',
    /** pg_dump that writes `tenants drop --dump-to` files (looked up in PATH). Command. */
    pgDump: 'pg_dump',
    /** pg_restore that restores the copy of `tenants move` (looked up in PATH). Command. */
    pgRestore: 'pg_restore'
  },

  tenantExec: {
    /**
     * DATABASE_URL handed to each `tenants exec` command: {database} {host} {port} {slug} are the
     * tenant's, {user} {password} come from the variables named below (percent-encoded), {userinfo}
     * is `user:password@`, `user@` or nothing. Text with those placeholders.
     */
    databaseUrlTemplate: 'postgres://{userinfo}{host}:{port}/{database}',
    /** Environment variable of the CLI holding the tenant databases' user. Variable name. */
    userEnv: 'TENANT_DATABASE_USER',
    /** Environment variable of the CLI holding that user's password (never stored or printed). Variable name. */
    passwordEnv: 'TENANT_DATABASE_PASSWORD',
    /** Directory of `tenants exec` runs: one subdirectory per run with its state and one log per tenant. Path. */
    runDirectory: './tenant-runs'
  },

  doctor: {
    /**
     * Databases never reported as orphans (besides template0, template1, postgres and the
     * registry's own database): names, `*` matches any run of characters. List of patterns.
     */
    ignoreDatabases: [] as string[],
    /** Tenant databases checked at once. Count. */
    concurrency: 8
  },

  traffic: {
    /** Address the traffic listener binds. IP address. */
    host: '0.0.0.0',
    /** Port of the traffic listener. Port number (0 picks a free one). */
    port: 8080,
    /** Health path answered for any Host before tenant resolution. URL path. */
    healthPath: '/up',
    /**
     * Path answering the on-demand TLS ask on the traffic listener, for any Host, before tenant
     * resolution (kamal-proxy's --tls-on-demand-url given as a path, which it sends through its
     * route to the app); the ops listener always answers it at /.well-known/tenant-proxy/tls-ask.
     * Empty turns it off, so no path of the apps is taken unless asked. URL path, or empty.
     */
    tlsAskPath: '',
    /**
     * Peers whose forwarding headers (traffic.trustedForwardedHeaders) and X-Request-Id are
     * believed: the proxy in front of this one. IPs or CIDRs. List of text.
     */
    trustedProxies: [] as string[],
    /**
     * Forwarding headers believed from traffic.trustedProxies: kept (X-Forwarded-For appended to)
     * instead of replaced. Every other forwarding header (docs/operations.md, "Forwarding headers")
     * is dropped even from trusted proxies, because a proxy passes through whatever it does not set
     * itself. X-Forwarded-Host cannot be listed: it always names the host the tenant was chosen for
     * (see hostFromForwardedHost). The default is what kamal-proxy sets itself on every
     * request, after dropping the client's copies (Go's httputil.ProxyRequest.SetXForwarded);
     * it passes every other header through from the client. List of header names.
     */
    trustedForwardedHeaders: ['X-Forwarded-For', 'X-Forwarded-Proto'],
    /**
     * Choose the tenant from a trusted proxy's X-Forwarded-Host (its last entry) instead of Host.
     * Only for a front proxy that rewrites Host and always sets X-Forwarded-Host itself; one that
     * passes a client's X-Forwarded-Host through (kamal-proxy on routes without TLS, unless
     * forward_headers is false) would let clients choose another tenant. Boolean.
     */
    hostFromForwardedHost: false,
    /**
     * Forward request headers whose names contain '_' (like nginx's underscores_in_headers).
     * CGI-style apps read `X_Foo` as `X-Foo`; the '_' spellings of headers the proxy controls are
     * dropped whatever this says. Boolean.
     */
    allowUnderscoresInHeaders: false,
    /** Idle keep-alive connections close after this long; above the load balancer's. Milliseconds. */
    keepAliveTimeoutMs: 72_000, // 72 seconds
    /** A client must send all request headers within this long. Milliseconds. */
    requestHeadersTimeoutMs: 30_000, // 30 seconds
    /** Largest request header section accepted. Bytes. */
    maxHeaderBytes: 16_384, // 16 KiB
    /**
     * What /up checks besides "registry loaded, not draining": `registry` nothing more (the proxy
     * in its own container), `upstream` also the app's own health path (upstream.healthCheck.path;
     * the proxy inside the app image, health-checked in place of the app). One of registry, upstream.
     */
    healthMode: 'registry' as 'registry' | 'upstream'
  },

  ops: {
    /** Address the ops listener (metrics, readiness, key set) binds. IP address. */
    host: '0.0.0.0',
    /** Port of the ops listener. Port number (0 picks a free one). */
    port: 9394,
    descriptorApi: {
      /**
       * (secret) Bearer tokens of the ops descriptor API (/v1/tenants…, docs/operations.md,
       * "Descriptors outside a request"); any one of them is accepted. Empty disables the API
       * (404). List of texts, each 32-512 characters of A-Z a-z 0-9 - . _ ~ + / and trailing =
       * (RFC 6750's b64token), e.g. `openssl rand -hex 32`.
       */
      tokens: [] as string[]
    }
  },

  routing: {
    /** `www.<domain>` resolves like `<domain>` when only the latter is registered. Boolean. */
    wwwFallback: true,
    /** Base domains whose first label is a tenant slug (`acme.example.com` → acme). List of hostnames. */
    wildcardDomains: [] as string[],
    /** First labels under a wildcard domain that never resolve to a tenant. List of labels. */
    reservedLabels: ['www', 'admin', 'api'],
    /** Hosts forwarded without a descriptor (signup or marketing site). List of hostnames. */
    passthroughHosts: [] as string[],
    /** Retry-After sent with 503 for tenants in maintenance. Seconds. */
    maintenanceRetryAfterS: 30,
    /** Paused tenants (`tenants pause`, `tenants move`): their requests are held, not refused. */
    pause: {
      /** Most requests held at once for one paused tenant; more get 503 + Retry-After at once. Count (0: none held). */
      maxHeldPerTenant: 1_000,
      /** Most requests held at once for all paused tenants together. Count. */
      maxHeld: 10_000,
      /** Retry-After sent with the 503 of a request held past its pause's timeout, or not held (over a cap). Seconds. */
      retryAfterS: 5
    }
  },

  descriptor: {
    /** Request header carrying the signed descriptor. Header name. */
    header: 'X-Tenant-Descriptor',
    /** The descriptor's `aud` claim: the upstream app's id. Text. */
    audience: 'app',
    /** Descriptor lifetime (`exp` - `iat`). Seconds. */
    ttlS: 60,
    /** A cached descriptor is re-signed this long before it expires. Seconds. */
    refreshMarginS: 20,
    /**
     * (secret) Signing keys, first signs: `[{ "kid"?, "alg"?, "key" }]` where key is an EC P-256
     * PEM (ES256; a public PEM is published but never signs) or, with `"alg": "HS256"` (never
     * implied), a secret of >= 32 bytes. From the environment also PEM blocks (a file may add #
     * comments) or `hs256:<secret>`; any other text, damaged PEM armour included, is refused.
     */
    keys: [] as Array<{ kid?: string | null, alg?: 'ES256' | 'HS256' | null, key: string }>
  },

  upstream: {
    /** Upstream app origins, balanced round-robin. List of http(s):// URLs. */
    urls: ['http://127.0.0.1:3000'],
    /** Named upstream pools for tenants whose registry row sets `upstream`. Object: name → list of URLs. */
    pools: {} as Record<string, string[]>,
    /** Host header sent upstream; null keeps the client's (the original goes in X-Forwarded-Host). Hostname. */
    hostHeader: null as string | null,
    /** Give up connecting to the upstream after this long (then 502). Milliseconds. */
    connectTimeoutMs: 5_000, // 5 seconds
    /** Give up waiting for the upstream's response headers after this long (then 504). Milliseconds. */
    headersTimeoutMs: 60_000, // 60 seconds
    /** Give up when the upstream body stalls for this long. Milliseconds. */
    bodyTimeoutMs: 300_000, // 5 minutes
    /** Most concurrent connections to each upstream address. Count. */
    connections: 128,
    /** Largest request body forwarded; larger ones get 413. 0 = no limit. Bytes. */
    maxBodyBytes: 1_073_741_824, // 1 GiB
    /**
     * Upstream host names are re-resolved this often and every address is used (a Docker network
     * alias resolves to the old and new containers during a deploy); 0 resolves once. Milliseconds.
     */
    dnsRefreshMs: 5_000, // 5 seconds
    /** Consecutive connection failures after which an address is ejected from rotation. Count. */
    ejectAfterFailures: 2,
    /** First ejection period; doubles while the address keeps failing. Milliseconds. */
    ejectMinMs: 1_000, // 1 second
    /** Longest ejection period. Milliseconds. */
    ejectMaxMs: 30_000, // 30 seconds
    healthCheck: {
      /** The app's own health path, checked on every address (e.g. /up); empty disables active checks. URL path. */
      path: '',
      /** Active health check period per address. Milliseconds. */
      intervalMs: 5_000, // 5 seconds
      /** A health check without an answer after this long failed. Milliseconds. */
      timeoutMs: 2_000, // 2 seconds
      /** With traffic.healthMode upstream: how long /up reuses the app's last answer. Milliseconds. */
      cacheMs: 1_000 // 1 second
    }
  },

  shutdown: {
    /**
     * After SIGTERM, /up answers 503 (and responses say Connection: close) for this long while the
     * listener still accepts, so the load balancer moves away. Milliseconds.
     */
    drainDelayMs: 3_000, // 3 seconds
    /**
     * Then the listener closes, WebSockets get close code 1001, and in-flight requests get this
     * long to finish. Delay + grace stay under Docker's default 10 s stop timeout. Milliseconds.
     */
    graceMs: 5_000 // 5 seconds
  }
}

export type Defaults = typeof DEFAULTS
