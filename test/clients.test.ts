/**
 * The Ruby (clients/ruby) and Python (clients/python) verifiers: their own test suites on the
 * shared vectors, and live tokens from a running proxy verified against its JWKS URL. Each part is
 * skipped, with the reason, where the interpreter or its JWT library is missing (CI installs
 * ruby, ruby-jwt, ruby-rack, python3-jwt, python3-cryptography and python3-idna).
 */
import { execFile } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import t from 'tap'
import { request } from 'undici'
import { JWKS_PATH } from '../src/ops/app.js'
import { startTestProxy, testConfig, testRegistry } from './helpers/proxy.js'
import { startUpstream, type SeenRequest } from './helpers/upstream.js'

const RUBY_DIR = fileURLToPath(new URL('../clients/ruby/', import.meta.url))
const PYTHON_DIR = fileURLToPath(new URL('../clients/python/', import.meta.url))

interface Run { code: number, stdout: string, stderr: string }

/** Runs a program to completion (bounded by `timeoutMs`); never rejects. */
async function run (file: string, args: string[], opts: { cwd?: string, env?: Record<string, string>, timeoutMs?: number } = {}): Promise<Run> {
  return await new Promise((resolve) => {
    execFile(file, args, { cwd: opts.cwd, env: { ...process.env, PYTHONDONTWRITEBYTECODE: '1', ...opts.env }, timeout: opts.timeoutMs ?? 60_000, maxBuffer: 4 << 20 }, (err, stdout, stderr) => {
      const code = err === null ? 0 : typeof err.code === 'number' ? err.code : -1
      resolve({ code, stdout, stderr })
    })
  })
}

/** `ruby` when it loads jwt, rack and minitest; otherwise why not. */
async function findRuby (): Promise<{ bin: string } | { skip: string }> {
  const r = await run('ruby', ['-e', 'require "jwt"; require "rack"; require "minitest"; print JWT::VERSION::STRING'], { timeoutMs: 20_000 })
  if (r.code === 0) return { bin: 'ruby' }
  return { skip: r.code === -1 ? 'ruby is not installed (apt-get install ruby ruby-jwt ruby-rack)' : `ruby lacks jwt, rack or minitest (apt-get install ruby-jwt ruby-rack): ${r.stderr.split('\n')[0] ?? ''}` }
}

/** The first python3 that imports jwt, cryptography and idna (Debian's packages serve /usr/bin/python3, which a pyenv shim may hide). */
async function findPython (): Promise<{ bin: string } | { skip: string }> {
  for (const bin of ['python3', '/usr/bin/python3']) {
    const r = await run(bin, ['-c', 'import jwt, cryptography, idna; print(jwt.__version__)'], { timeoutMs: 20_000 })
    if (r.code === 0) return { bin }
  }
  return { skip: 'no python3 with PyJWT, cryptography and idna (apt-get install python3-jwt python3-cryptography python3-idna)' }
}

const ruby = await findRuby()
const python = await findPython()
const skipOf = (x: { bin: string } | { skip: string }): string | false => 'skip' in x ? x.skip : false

t.test('Ruby suite (clients/ruby, minitest)', { skip: skipOf(ruby) }, async (t) => {
  if (!('bin' in ruby)) return
  const r = await run(ruby.bin, ['-Ilib', '-Itest', '-e', 'Dir["test/*_test.rb"].sort.each { |f| require File.expand_path(f) }'], { cwd: RUBY_DIR })
  t.equal(r.code, 0, 'minitest exits 0')
  t.match(r.stdout, / 0 failures, 0 errors/, 'no failures or errors')
  t.notMatch(r.stdout, /^0 runs/m, 'tests ran')
  if (r.code !== 0) t.comment(r.stdout + r.stderr)
})

t.test('Python suite (clients/python, unittest)', { skip: skipOf(python) }, async (t) => {
  if (!('bin' in python)) return
  const r = await run(python.bin, ['-m', 'unittest', 'discover', '-s', 'tests'], { cwd: PYTHON_DIR })
  t.equal(r.code, 0, 'unittest exits 0')
  t.match(r.stderr, /^Ran [1-9]\d* tests/m, 'tests ran')
  t.match(r.stderr, /^OK$/m)
  if (r.code !== 0) t.comment(r.stderr)
})

t.test('live tokens from a running proxy, verified against its JWKS URL', { skip: skipOf(ruby) !== false && skipOf(python) !== false ? 'neither ruby nor python3 with their JWT library is available' : false }, async (t) => {
  const registry = await testRegistry(t, [
    { slug: 'acme', domains: ['acme.example.com'], databaseName: 'acme_prod' },
    { slug: 'globex', domains: ['globex.example.com'], databaseName: 'globex_prod', databaseHost: 'db2.internal', databasePort: 6432 }
  ])
  const upstream = await startUpstream(t)
  const proxy = await startTestProxy(t, testConfig(registry.url, upstream.origin, { TENANT_PROXY_DEPLOYMENT_ID: 'live-deploy', TENANT_PROXY_DESCRIPTOR_AUDIENCE: 'live-app' }))
  const jwksUrl = `${proxy.opsUrl}${JWKS_PATH}`

  /** The descriptor the upstream received for a request to `host`. */
  const descriptorFor = async (host: string): Promise<string> => {
    const res = await request(`${proxy.url}/orders`, { headers: { host } })
    t.equal(res.statusCode, 200, `${host} is routed`)
    const token = (await res.body.json() as SeenRequest).headers['x-tenant-descriptor']
    if (typeof token !== 'string') throw new Error(`no descriptor reached the upstream for ${host}`)
    return token
  }
  const acme = await descriptorFor('acme.example.com')
  const globex = await descriptorFor('globex.example.com')

  const clients = [
    { name: 'Ruby', runtime: ruby, script: 'examples/verify_live.rb', cwd: RUBY_DIR },
    { name: 'Python', runtime: python, script: 'examples/verify_live.py', cwd: PYTHON_DIR }
  ]
  for (const c of clients) {
    t.test(c.name, { skip: skipOf(c.runtime) }, async (t) => {
      if (!('bin' in c.runtime)) return
      const bin = c.runtime.bin
      // The token travels in the environment: argv is visible to every local user.
      const verify = async (token: string, host: string, audience = 'live-app'): Promise<Run> =>
        await run(bin, [c.script, '--jwks-url', jwksUrl, '--issuer', 'live-deploy', '--audience', audience, '--host', host], { cwd: c.cwd, env: { TENANT_DESCRIPTOR: token }, timeoutMs: 30_000 })

      const a = await verify(acme, 'acme.example.com')
      t.equal(a.code, 0, 'acme verifies')
      if (a.code !== 0) t.comment(a.stderr)
      t.equal(a.stdout.trim(), 'tenant=acme db=acme_prod db_host=localhost db_port=5432 epoch=1')
      const g = await verify(globex, 'GLOBEX.example.com:8443')
      t.equal(g.stdout.trim(), 'tenant=globex db=globex_prod db_host=db2.internal db_port=6432 epoch=1', 'the Host header form (case, port) is canonicalized')

      const replay = await verify(acme, 'globex.example.com')
      t.equal(replay.code, 1, 'acme\'s token presented for globex\'s host is refused')
      t.equal(replay.stdout.trim(), 'refused reason=host_mismatch')
      const otherApp = await verify(acme, 'acme.example.com', 'billing')
      t.equal(otherApp.stdout.trim(), 'refused reason=audience', 'a token for app live-app is refused by app billing')
      const joined = await verify(`${acme}, ${globex}`, 'acme.example.com')
      t.equal(joined.stdout.trim(), 'refused reason=comma', 'two descriptors joined by an intermediary are refused')
      for (const r of [a, g, replay, otherApp, joined]) t.notMatch(r.stdout + r.stderr, acme.split('.')[2] ?? acme, 'the token is never printed')
    })
  }
})
