import t from 'tap'
import { DEFAULTS } from '../config/defaults.js'
import { configKeys, envName, loadConfig } from '../src/config/load.js'
import { isTpError } from '../src/errors.js'
import { workerCount } from '../src/cli/serve.js'
import { runCli } from './helpers/cli.js'

function problems (env: Record<string, string>, opts: { configPath?: string, files?: Record<string, string> } = {}): string {
  try {
    loadConfig({ env, configPath: opts.configPath, readFile: (p) => { const f = opts.files?.[p]; if (f === undefined) throw Object.assign(new Error(`ENOENT: ${p}`), { code: 'ENOENT' }); return f } })
  } catch (err) {
    if (isTpError(err, 'TENANT_PROXY_ERR_CONFIG_INVALID') || isTpError(err, 'TENANT_PROXY_ERR_CONFIG_FILE')) return err.message
    throw err
  }
  return ''
}

t.test('defaults load, are frozen and typed', async (t) => {
  const config = loadConfig({ env: {} })
  t.equal(config.traffic.port, 8080)
  t.equal(config.ops.port, 9394)
  t.equal(config.registry.databaseUrl, null)
  t.ok(Object.isFrozen(config) && Object.isFrozen(config.traffic) && Object.isFrozen(config.routing.reservedLabels))
  t.throws(() => { (config.traffic as { port: number }).port = 1 })
})

t.test('schema and defaults have exactly the same keys', async (t) => {
  const leaves: string[] = []
  const walk = (node: Record<string, unknown>, prefix: string): void => {
    for (const [k, v] of Object.entries(node)) {
      const path = prefix === '' ? k : `${prefix}.${k}`
      if (v !== null && typeof v === 'object' && !Array.isArray(v) && !['pools'].includes(k)) walk(v as Record<string, unknown>, path)
      else leaves.push(path)
    }
  }
  walk(DEFAULTS, '')
  t.same(configKeys().map((k) => k.path).sort(), leaves.sort())
})

t.test('environment variables override, with types decoded', async (t) => {
  const config = loadConfig({
    env: {
      TENANT_PROXY_TRAFFIC_PORT: '9000',
      TENANT_PROXY_ROUTING_WWW_FALLBACK: 'false',
      TENANT_PROXY_ROUTING_WILDCARD_DOMAINS: 'Example.COM, apps.example.net.',
      TENANT_PROXY_UPSTREAM_URLS: '["http://a:3000","http://b:3000/"]',
      TENANT_PROXY_UPSTREAM_POOLS: '{"heavy":["http://c:3000"]}',
      REGISTRY_DATABASE_URL: 'postgres://u:p@db/registry'
    }
  })
  t.equal(config.traffic.port, 9000)
  t.equal(config.routing.wwwFallback, false)
  t.same(config.routing.wildcardDomains, ['example.com', 'apps.example.net'])
  t.same(config.upstream.urls, ['http://a:3000', 'http://b:3000'])
  t.same(config.upstream.pools, { heavy: ['http://c:3000'] })
  t.equal(config.registry.databaseUrl, 'postgres://u:p@db/registry')
  t.equal(envName('traffic.keepAliveTimeoutMs'), 'TENANT_PROXY_TRAFFIC_KEEP_ALIVE_TIMEOUT_MS')
})

t.test('secrets come from *_FILE', async (t) => {
  const { generateKeyPairSync } = await import('node:crypto')
  const pem = (): string => generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ type: 'pkcs8', format: 'pem' }).toString()
  const second = pem()
  const config = loadConfig({
    env: { TENANT_PROXY_REGISTRY_DATABASE_URL_FILE: '/run/secrets/db', TENANT_PROXY_DESCRIPTOR_KEYS_FILE: '/run/secrets/keys' },
    readFile: (p) => p === '/run/secrets/db' ? 'postgres://u:secret@db/r\n' : `${pem()}${second}`
  })
  t.equal(config.registry.databaseUrl, 'postgres://u:secret@db/r')
  t.equal(config.descriptor.keys.length, 2)
  t.equal(config.descriptor.keys[1]?.key, second.trim())
  t.match(problems({ TENANT_PROXY_REGISTRY_DATABASE_URL_FILE: '/missing' }), /registry\.databaseUrl: cannot read TENANT_PROXY_REGISTRY_DATABASE_URL_FILE \(\/missing\): ENOENT/)
  t.match(problems({ TENANT_PROXY_TRAFFIC_PORT: '1', TENANT_PROXY_TRAFFIC_PORT_FILE: '/x' }), /traffic\.port: set by both TENANT_PROXY_TRAFFIC_PORT and TENANT_PROXY_TRAFFIC_PORT_FILE/)
})

t.test('every error names the full key path and the reason', async (t) => {
  const cases: Array<[Record<string, string>, RegExp]> = [
    [{ TENANT_PROXY_TRAFFIC_PORT: 'http' }, /traffic\.port: must be an integer from 0 to 65535 \(got "http" from TENANT_PROXY_TRAFFIC_PORT\)/],
    [{ TENANT_PROXY_TRAFFIC_PORT: '70000' }, /traffic\.port: must be an integer from 0 to 65535/],
    [{ TENANT_PROXY_LOG_LEVEL: 'loud' }, /log\.level: must be one of fatal, error, warn, info, debug, trace, silent/],
    [{ TENANT_PROXY_ROUTING_WWW_FALLBACK: 'maybe' }, /routing\.wwwFallback: must be true or false/],
    [{ TENANT_PROXY_UPSTREAM_URLS: 'ftp://x' }, /upstream\.urls: item \[0\] must use http:\/\/ or https:\/\//],
    [{ TENANT_PROXY_UPSTREAM_URLS: 'http://a:3000/app' }, /upstream\.urls: item \[0\] must be an origin without path/],
    [{ TENANT_PROXY_UPSTREAM_URLS: '[]' }, /upstream\.urls: must have at least 1 item/],
    [{ TENANT_PROXY_UPSTREAM_POOLS: '{"Bad Name":["http://a"]}' }, /upstream\.pools: name "Bad Name" must match/],
    [{ TENANT_PROXY_UPSTREAM_POOLS: '{oops' }, /upstream\.pools: is not valid JSON/],
    [{ TENANT_PROXY_REGISTRY_SCHEMA: 'Tenant-Proxy' }, /registry\.schema: must be a lower-case SQL identifier/],
    [{ TENANT_PROXY_REGISTRY_DATABASE_URL: 'mysql://x' }, /registry\.databaseUrl: must start with postgres:\/\/ or postgresql:\/\/ \(from TENANT_PROXY_REGISTRY_DATABASE_URL\)/],
    [{ TENANT_PROXY_ROUTING_WILDCARD_DOMAINS: 'a..b' }, /routing\.wildcardDomains: item \[0\] must be a hostname/],
    [{ TENANT_PROXY_TRAFFIC_TRUSTED_PROXIES: '10.0.0.0/33' }, /traffic\.trustedProxies: item \[0\] must be an IP address or CIDR/],
    [{ TENANT_PROXY_TRAFFIC_HEALTH_PATH: 'up' }, /traffic\.healthPath: must be an absolute URL path/],
    [{ TENANT_PROXY_DESCRIPTOR_TTL_S: '60', TENANT_PROXY_DESCRIPTOR_REFRESH_MARGIN_S: '60' }, /descriptor\.refreshMarginS: must be less than descriptor\.ttlS/],
    [{ TENANT_PROXY_DESCRIPTOR_KEYS: '[{"key":"x","color":"red"}]' }, /descriptor\.keys: item \[0\] has unknown key color/],
    [{ TENANT_PROXY_TRAFIC_PORT: '80' }, /TENANT_PROXY_TRAFIC_PORT: unknown environment variable/],
    [{ TENANT_PROXY_OPS_PORT: '8080' }, /ops\.port: must differ from traffic\.port/]
  ]
  for (const [env, expected] of cases) t.match(problems(env), expected, JSON.stringify(env))
})

t.test('workers: an integer from 1 to 256 or "auto" (one per available CPU); anything else names the key and its variable', async (t) => {
  t.equal(loadConfig({ env: {} }).workers, 1, 'one process by default')
  t.equal(loadConfig({ env: { TENANT_PROXY_WORKERS: '4' } }).workers, 4)
  t.equal(loadConfig({ env: { TENANT_PROXY_WORKERS: 'auto' } }).workers, 'auto')
  t.equal(workerCount('auto', 6), 6, 'auto: the CPUs available')
  t.equal(workerCount(3, 6), 3)
  for (const value of ['0', '257', '1.5', 'all', '-2']) {
    t.match(problems({ TENANT_PROXY_WORKERS: value }), /workers: must be "auto" or an integer from 1 to 256 \(got .*from TENANT_PROXY_WORKERS\)/, value)
  }
})

t.test('forwarding options: header names checked, X-Forwarded-Host only through hostFromForwardedHost', async (t) => {
  const config = loadConfig({ env: { TENANT_PROXY_TRAFFIC_TRUSTED_FORWARDED_HEADERS: 'X-Forwarded-For, X-FORWARDED-PORT,forwarded' } })
  t.same(config.traffic.trustedForwardedHeaders, ['x-forwarded-for', 'x-forwarded-port', 'forwarded'], 'lower-cased')
  const defaults = loadConfig({ env: {} }).traffic
  t.same([defaults.trustedForwardedHeaders, defaults.hostFromForwardedHost, defaults.allowUnderscoresInHeaders], [['x-forwarded-for', 'x-forwarded-proto'], false, false], 'safe defaults')
  const cases: Array<[Record<string, string>, RegExp]> = [
    [{ TENANT_PROXY_TRAFFIC_TRUSTED_FORWARDED_HEADERS: 'X-Api-Key' }, /traffic\.trustedForwardedHeaders: item \[0\] must be one of the forwarding headers tenant-proxy filters .*"X-Api-Key" is not \(got .*from TENANT_PROXY_TRAFFIC_TRUSTED_FORWARDED_HEADERS\)/],
    [{ TENANT_PROXY_TRAFFIC_TRUSTED_FORWARDED_HEADERS: 'X-Forwarded-For,X-Forwarded-Host' }, /traffic\.trustedForwardedHeaders: item \[1\] must not be X-Forwarded-Host.*traffic\.hostFromForwardedHost/],
    [{ TENANT_PROXY_TRAFFIC_HOST_FROM_FORWARDED_HOST: 'true' }, /traffic\.hostFromForwardedHost: is true, which needs traffic\.trustedProxies/],
    [{ TENANT_PROXY_TRAFFIC_ALLOW_UNDERSCORES_IN_HEADERS: 'sometimes' }, /traffic\.allowUnderscoresInHeaders: must be true or false/]
  ]
  for (const [env, expected] of cases) t.match(problems(env), expected, JSON.stringify(env))
  t.equal(loadConfig({ env: { TENANT_PROXY_TRAFFIC_HOST_FROM_FORWARDED_HOST: 'true', TENANT_PROXY_TRAFFIC_TRUSTED_PROXIES: '10.0.0.0/8' } }).traffic.hostFromForwardedHost, true)
})

t.test('secret values are never echoed in errors', async (t) => {
  const message = problems({ TENANT_PROXY_REGISTRY_DATABASE_URL: 'mysql://user:hunter2@db/x', TENANT_PROXY_DESCRIPTOR_KEYS: '[{"key":"hunter3-but-short","alg":"RS256"}]' })
  t.match(message, /registry\.databaseUrl/)
  t.match(message, /descriptor\.keys/)
  t.notMatch(message, /hunter2|hunter3/)
})

t.test('registry.listenUrl: the change feed URL beside a pooled databaseUrl, a secret, null by default', async (t) => {
  t.equal(loadConfig({ env: {} }).registry.listenUrl, null)
  const config = loadConfig({ env: { REGISTRY_DATABASE_URL: 'postgres://u:p@pgbouncer:6432/registry', TENANT_PROXY_REGISTRY_LISTEN_URL: 'postgres://u:p@db:5432/registry' } })
  t.equal(config.registry.listenUrl, 'postgres://u:p@db:5432/registry')
  t.equal(config.registry.databaseUrl, 'postgres://u:p@pgbouncer:6432/registry')
  const message = problems({ TENANT_PROXY_REGISTRY_LISTEN_URL: 'mysql://user:hunter2@db/x' })
  t.match(message, /registry\.listenUrl: must start with postgres:\/\/ or postgresql:\/\/ \(from TENANT_PROXY_REGISTRY_LISTEN_URL\)/)
  t.notMatch(message, /hunter2/)
})

t.test('config file: unknown keys, wrong shapes and bad JSON are named', async (t) => {
  const files = {
    '/c.json': JSON.stringify({ traffic: { port: 81, bogus: 1 }, routing: 'x', nope: {} }),
    '/ok.json': JSON.stringify({ traffic: { port: 81 }, descriptor: { audience: 'billing' } }),
    '/bad.json': '{ "traffic": '
  }
  const message = problems({}, { configPath: '/c.json', files })
  t.match(message, /traffic\.bogus: unknown key \(in config file \/c\.json\)/)
  t.match(message, /routing: must be an object/)
  t.match(message, /nope: unknown key/)
  t.match(problems({}, { configPath: '/bad.json', files }), /cannot read config file \/bad\.json/)
  const config = loadConfig({ env: { TENANT_PROXY_TRAFFIC_PORT: '82' }, configPath: '/ok.json', readFile: (p) => files[p as keyof typeof files] })
  t.equal(config.traffic.port, 82, 'environment wins over the file')
  t.equal(config.descriptor.audience, 'billing')
})

t.test('the CLI refuses a bad config: names the key, exits non-zero, starts nothing', async (t) => {
  const r = await runCli(['tenants', 'list'], { TENANT_PROXY_TRAFFIC_PORT: 'eighty' })
  t.equal(r.code, 78)
  t.match(r.stderr, /traffic\.port: must be an integer from 0 to 65535 \(got "eighty" from TENANT_PROXY_TRAFFIC_PORT\)/)
  t.match(r.stderr, /TENANT_PROXY_ERR_CONFIG_INVALID/)
  t.equal(r.stdout, '')
  const serve = await runCli(['serve'], { TENANT_PROXY_REGISTRY_SCHEMA: 'Bad' })
  t.equal(serve.code, 78)
  t.match(serve.stderr, /registry\.schema/)
})

t.test('a PEM whose newlines arrive escaped (Docker env files, Kamal secrets) is unescaped', async (t) => {
  const { generateKeyPairSync } = await import('node:crypto')
  const pem = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ type: 'pkcs8', format: 'pem' }).toString()
  const escaped = pem.trim().replaceAll('\n', '\\n')
  const config = loadConfig({ env: { TENANT_PROXY_DESCRIPTOR_KEYS: escaped } })
  t.equal(config.descriptor.keys[0]?.key, pem.trim())
  const { loadKeyring } = await import('../src/descriptor/keyring.js')
  t.equal(loadKeyring(config.descriptor.keys).signer.alg, 'ES256', 'and it signs')
  // An hs256: secret is taken as written, backslashes included.
  t.same(loadConfig({ env: { TENANT_PROXY_DESCRIPTOR_KEYS: 'hs256:a\\nsecret-that-is-long-enough-for-hs256-0123456789' } }).descriptor.keys[0], { kid: null, alg: 'HS256', key: 'a\\nsecret-that-is-long-enough-for-hs256-0123456789' })
})

t.test('ops.descriptorApi.tokens: a comma list, a JSON list or a file; bad tokens refused without being shown', async (t) => {
  const a = 'a'.repeat(32)
  const b = `${'B0-._~+/'.repeat(5)}==`
  t.same(loadConfig({ env: {} }).ops.descriptorApi.tokens, [], 'off by default')
  t.same(loadConfig({ env: { TENANT_PROXY_OPS_DESCRIPTOR_API_TOKENS: `${a}, ${b}` } }).ops.descriptorApi.tokens, [a, b], 'comma list')
  t.same(loadConfig({ env: { TENANT_PROXY_OPS_DESCRIPTOR_API_TOKENS: JSON.stringify([b]) } }).ops.descriptorApi.tokens, [b], 'JSON list')
  t.same(loadConfig({ env: { TENANT_PROXY_OPS_DESCRIPTOR_API_TOKENS_FILE: '/run/secrets/tokens' }, readFile: () => `${a}\n` }).ops.descriptorApi.tokens, [a], 'a secret file, its newline dropped')
  t.equal(envName('ops.descriptorApi.tokens'), 'TENANT_PROXY_OPS_DESCRIPTOR_API_TOKENS')
  const short = 'hunter2-too-short-0123456789'
  const spaced = 'hunter3 has a space in it 0123456789'
  for (const [what, value, reason] of [['too short', short, /item \[0\] must be 32-512 characters/], ['not a bearer token', JSON.stringify([spaced]), /item \[0\] must be 32-512 characters/], ['not a string', '[1]', /item \[0\] must be a string/], ['too long', 'x'.repeat(513), /item \[0\] must be 32-512/]] as const) {
    const message = problems({ TENANT_PROXY_OPS_DESCRIPTOR_API_TOKENS: value })
    t.match(message, /ops\.descriptorApi\.tokens: /, `${what}: names the key`)
    t.match(message, reason, `${what}: the reason`)
    t.match(message, /from TENANT_PROXY_OPS_DESCRIPTOR_API_TOKENS\)/, `${what}: the source`)
    t.notMatch(message, /hunter|xxxxxxxx/, `${what}: never the value`)
  }
  const e = await runCli(['tenants', 'list'], { TENANT_PROXY_OPS_DESCRIPTOR_API_TOKENS: short })
  t.equal(e.code, 78, 'a bad token stops the start with exit code 78')
  t.notMatch(e.stderr, /hunter2/)
})
