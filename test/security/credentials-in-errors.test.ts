/**
 * Configuration and start-up errors never print credentials: an upstream origin or a registry
 * URL given with a password, malformed or refused, from the environment or a config file, is
 * reported by the real binary naming the key and where it came from, exit 78, with the URL's
 * userinfo shown as `***` and the password nowhere in stdout or stderr. JSON syntax errors are
 * reported by position, never with V8's quote of the text around the error.
 *
 * Guards: src/redact.ts, src/config/load.ts (validate, parseJson, the config file),
 * src/config/fields.ts (httpOrigin), src/registry/connect.ts (describeError), src/cli/run.ts.
 */
import { randomBytes } from 'node:crypto'
import { mkdtemp, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { runCli } from '../helpers/cli.js'
import { redactUrls } from '../../src/redact.js'

// Characters a password may hold unencoded that trip URL parsers: '/', '@', '#', '?'.
const PASSWORD = `Pw${randomBytes(6).toString('hex')}`
const WEIRD = `p/w@${PASSWORD}#x?y`

interface Case {
  name: string
  env?: Record<string, string>
  file?: unknown
  /** The file's raw text, for syntax errors. */
  text?: string
  code: 'TENANT_PROXY_ERR_CONFIG_INVALID' | 'TENANT_PROXY_ERR_CONFIG_FILE' | 'TENANT_PROXY_ERR_REGISTRY_UNREACHABLE'
  expect: RegExp
  /** The value is printed (not a secret key): its userinfo must show as ***. */
  redacted?: boolean
}

const CASES: Case[] = [
  { name: 'upstream.urls with a password (env)', env: { TENANT_PROXY_UPSTREAM_URLS: `http://admin:${PASSWORD}@app:3000` }, code: 'TENANT_PROXY_ERR_CONFIG_INVALID', expect: /upstream\.urls: item \[0\] must not carry credentials \(got \["http:\/\/\*\*\*@app:3000"\] from TENANT_PROXY_UPSTREAM_URLS\)/, redacted: true },
  { name: 'upstream.urls unparsable, with a password (env)', env: { TENANT_PROXY_UPSTREAM_URLS: `http://admin:${PASSWORD}@app:notaport` }, code: 'TENANT_PROXY_ERR_CONFIG_INVALID', expect: /upstream\.urls: item \[0\] must be an http:\/\/ or https:\/\/ URL \(got \["http:\/\/\*\*\*@app:notaport"\] from TENANT_PROXY_UPSTREAM_URLS\)/, redacted: true },
  { name: 'upstream.urls, password with / @ # ? (env, comma list)', env: { TENANT_PROXY_UPSTREAM_URLS: `http://app:3000,http://admin:${WEIRD}@app:3001` }, code: 'TENANT_PROXY_ERR_CONFIG_INVALID', expect: /upstream\.urls: item \[1\] .*from TENANT_PROXY_UPSTREAM_URLS/, redacted: true },
  { name: 'upstream.urls as broken JSON (env)', env: { TENANT_PROXY_UPSTREAM_URLS: `["http://admin:${PASSWORD}@app:3000" x]` }, code: 'TENANT_PROXY_ERR_CONFIG_INVALID', expect: /upstream\.urls: is not valid JSON \(error at character \d+\) \(from TENANT_PROXY_UPSTREAM_URLS\)/ },
  { name: 'upstream.pools with a password (env)', env: { TENANT_PROXY_UPSTREAM_POOLS: JSON.stringify({ canary: [`https://ops:${PASSWORD}@canary.internal:8443/x`] }) }, code: 'TENANT_PROXY_ERR_CONFIG_INVALID', expect: /upstream\.pools: \["canary"\] item \[0\] must not carry credentials \(got \{"canary":\["https:\/\/\*\*\*@canary\.internal:8443\/x"\]\} from TENANT_PROXY_UPSTREAM_POOLS\)/, redacted: true },
  { name: 'upstream.pools as JSON V8 would quote (env)', env: { TENANT_PROXY_UPSTREAM_POOLS: `{"canary": ${PASSWORD}}` }, code: 'TENANT_PROXY_ERR_CONFIG_INVALID', expect: /upstream\.pools: is not valid JSON \(from TENANT_PROXY_UPSTREAM_POOLS\)/ },
  { name: 'registry URL malformed (REGISTRY_DATABASE_URL)', env: { REGISTRY_DATABASE_URL: `postgres://tp:${PASSWORD}@db:notaport/registry` }, code: 'TENANT_PROXY_ERR_CONFIG_INVALID', expect: /registry\.databaseUrl: must be a postgres:\/\/ URL \(from REGISTRY_DATABASE_URL\)/ },
  { name: 'registry URL of another scheme (env)', env: { TENANT_PROXY_REGISTRY_DATABASE_URL: `mysql://tp:${PASSWORD}@db/registry` }, code: 'TENANT_PROXY_ERR_CONFIG_INVALID', expect: /registry\.databaseUrl: must start with postgres:\/\/ or postgresql:\/\/ \(from TENANT_PROXY_REGISTRY_DATABASE_URL\)/ },
  { name: 'registry unreachable (env)', env: { REGISTRY_DATABASE_URL: `postgres://tp:${PASSWORD}@127.0.0.1:1/registry`, TENANT_PROXY_REGISTRY_CONNECT_TIMEOUT_MS: '2000' }, code: 'TENANT_PROXY_ERR_REGISTRY_UNREACHABLE', expect: /registry database unreachable/ },
  { name: 'upstream.urls with a password (config file)', file: { upstream: { urls: [`http://admin:${PASSWORD}@app:3000`] } }, code: 'TENANT_PROXY_ERR_CONFIG_INVALID', expect: /upstream\.urls: item \[0\] must not carry credentials \(got \["http:\/\/\*\*\*@app:3000"\] from config file .*\)/, redacted: true },
  { name: 'upstream.pools with a password (config file)', file: { upstream: { pools: { canary: [`http://ops:${WEIRD}@canary:80`] } } }, code: 'TENANT_PROXY_ERR_CONFIG_INVALID', expect: /upstream\.pools: \["canary"\] .*from config file/, redacted: true },
  { name: 'registry URL malformed (config file)', file: { registry: { databaseUrl: `postgresql://tp:${PASSWORD}@[db/registry` } }, code: 'TENANT_PROXY_ERR_CONFIG_INVALID', expect: /registry\.databaseUrl: must be a postgres:\/\/ URL \(from config file/ },
  { name: 'config file with a syntax error next to the password', text: `{"registry": {"databaseUrl": ${PASSWORD}}}`, code: 'TENANT_PROXY_ERR_CONFIG_FILE', expect: /cannot read config file .*: not valid JSON/ }
]

t.test('no credentials in configuration and start-up errors (real binary, env and config file)', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'tp-credentials-'))
  for (const [i, c] of CASES.entries()) {
    const args = ['tenants', 'list']
    if (c.file !== undefined || c.text !== undefined) {
      const path = join(dir, `config-${i}.json`)
      await writeFile(path, c.text ?? JSON.stringify(c.file))
      args.push('--config', path)
    }
    const r = await runCli(args, c.env ?? {})
    const output = r.stdout + r.stderr
    t.equal(r.code, c.code === 'TENANT_PROXY_ERR_REGISTRY_UNREACHABLE' ? 1 : 78, `${c.name}: exit code`)
    t.match(r.stderr, c.expect, `${c.name}: names the key and the source`)
    t.match(r.stderr, c.code, `${c.name}: ${c.code}`)
    t.notOk(output.includes(PASSWORD), `${c.name}: the password is nowhere in the output`)
    // V8 quotes about ten characters around a JSON syntax error: a prefix is a leak too.
    t.notOk(output.includes(PASSWORD.slice(0, 8)), `${c.name}: nor its first 8 characters`)
    if (c.redacted === true) t.match(r.stderr, /:\/\/\*\*\*@/, `${c.name}: the URL is shown with *** for its userinfo`)
  }
})

t.test('redactUrls: every URL\'s userinfo, however spelt', async (t) => {
  const cases: Array<[string, string]> = [
    ['postgres://u:p@h:5432/db', 'postgres://***@h:5432/db'],
    ['see postgresql://u:p%40ss@h/db and http://a:b@c', 'see postgresql://***@h/db and http://***@c'],
    [`http://admin:${WEIRD}@app:3001`, 'http://***@app:3001'],
    ['HTTPS://user@host/x', 'HTTPS://***@host/x'],
    ['["http://a:b@h1","http://h2"]', '["http://***@h1","http://h2"]'],
    ['http://h/no-credentials', 'http://h/no-credentials'],
    ['mailto-like user@example.com stays', 'mailto-like user@example.com stays']
  ]
  for (const [input, output] of cases) t.equal(redactUrls(input), output, input)
})
