/**
 * `tenant-proxy keys rotate` end to end: the CLI (built, as a real process) rewrites a key file
 * phase by phase, a real proxy is restarted on it after each phase (keys are read at start), and
 * a JWKS-backed verifier (@tenant-proxy/verify) follows through a real HTTP key set server that
 * relays the running proxy's JWKS and counts fetches. The verifier's clock is real time plus an
 * offset the test advances, so max-age and cooldown pass without sleeping.
 */
import { chmod, mkdtemp, readFile, stat, writeFile } from 'node:fs/promises'
import { createServer } from 'node:http'
import type { AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import type { Test } from 'tap'
import { request } from 'undici'
import { createVerifier, isDescriptorError, type DescriptorVerifier } from '@tenant-proxy/verify'
import { decodeDescriptor } from '../src/descriptor/verify.js'
import { JWKS_PATH } from '../src/ops/app.js'
import { runCli } from './helpers/cli.js'
import { es256Pem, startTestProxy, testConfig, testRegistry } from './helpers/proxy.js'
import { startUpstream } from './helpers/upstream.js'

const ISSUER = 'shop-production'
const AUDIENCE = 'shop'

t.test('keys rotate: publish → switch → retire with real proxies and a JWKS-backed verifier', async (t) => {
  const registry = await testRegistry(t, [{ slug: 'acme', domains: ['acme.example.com'] }])
  const upstream = await startUpstream(t)
  const dir = await mkdtemp(join(tmpdir(), 'tp-rotate-'))
  const keyFile = join(dir, 'descriptor-keys.pem')
  const firstPem = es256Pem()
  await writeFile(keyFile, firstPem)
  await chmod(keyFile, 0o600)

  let current: { opsUrl: string, url: string, stop: () => Promise<void> } | null = null
  async function restartProxy (t: Test): Promise<void> {
    await current?.stop()
    const config = testConfig(registry.url, upstream.origin, {
      TENANT_PROXY_DEPLOYMENT_ID: ISSUER,
      TENANT_PROXY_DESCRIPTOR_AUDIENCE: AUDIENCE,
      // Long-lived tokens, so the verifier's advanced clock does not expire them.
      TENANT_PROXY_DESCRIPTOR_TTL_S: '3600',
      TENANT_PROXY_DESCRIPTOR_KEYS_FILE: keyFile
    })
    current = await startTestProxy(t, config)
  }
  async function token (): Promise<string> {
    if (current === null) throw new Error('no proxy')
    const before = upstream.seen.length
    const r = await request(`${current.url}/x`, { headers: { host: 'acme.example.com' } })
    await r.body.dump()
    const value = upstream.seen[before]?.headers['x-tenant-descriptor']
    if (typeof value !== 'string') throw new Error('no descriptor reached the upstream')
    return value
  }
  const kidOf = (tok: string): string => String(decodeDescriptor(tok).header.kid)

  // The app's key set URL stays the same while proxies restart behind it.
  let relayFetches = 0
  const relay = createServer((_req, res) => {
    relayFetches++
    if (current === null) {
      res.writeHead(503).end()
      return
    }
    request(`${current.opsUrl}${JWKS_PATH}`).then(async (r) => {
      res.writeHead(r.statusCode, { 'content-type': 'application/json', 'cache-control': String(r.headers['cache-control']) }).end(await r.body.text())
    }, () => res.writeHead(502).end())
  })
  await new Promise<void>((resolve) => relay.listen(0, '127.0.0.1', resolve))
  t.teardown(async () => await new Promise<void>((resolve) => relay.close(() => resolve())))
  const jwksUrl = `http://127.0.0.1:${(relay.address() as AddressInfo).port}/jwks.json`

  let offsetMs = 0
  const now = (): number => Date.now() + offsetMs
  const verifier = createVerifier({ jwksUrl }, { issuer: ISSUER, audience: AUDIENCE, now })
  const outcome = async (v: DescriptorVerifier, tok: string): Promise<string> => {
    try {
      await v.verify(tok, 'acme.example.com')
      return 'valid'
    } catch (err) {
      if (isDescriptorError(err)) return err.reason
      throw err
    }
  }
  const rotate = async (...args: string[]): Promise<{ code: number, stdout: string, stderr: string }> => {
    const r = await runCli(['keys', 'rotate', '--file', keyFile, ...args])
    // Never a private key on the terminal (or in a CI log), whatever the phase or outcome.
    t.notMatch(r.stdout + r.stderr, /PRIVATE KEY|"d":/, `keys rotate ${args.join(' ')}: no private key in the output`)
    return r
  }

  // Phase 0: one key.
  await restartProxy(t)
  const tA0 = await token()
  const kidA = kidOf(tA0)
  t.equal(await outcome(verifier, tA0), 'valid', 'steady: A verifies')
  t.equal(verifier.jwksFetches, 1, 'the verifier fetched the key set once')
  // A second app that loads the steady key set now and keeps it for an hour (max-age pinned).
  let offset2Ms = 0
  const lagging = createVerifier({ jwksUrl }, { issuer: ISSUER, audience: AUDIENCE, jwksMaxAgeS: 3600, now: () => Date.now() + offset2Ms })
  t.equal(await outcome(lagging, tA0), 'valid', 'lagging app: loads the steady key set')
  t.match((await rotate()).stdout, /: steady\n {2}kid .* \(private\): signs\nnext: .*--phase publish/, 'without --phase: the state')

  // Out of order: refused, file unchanged.
  const steadyBytes = await readFile(keyFile)
  for (const phase of ['switch', 'retire']) {
    const r = await rotate('--phase', phase)
    t.equal(r.code, 1, `${phase} before publish: refused`)
    t.match(r.stderr, /TENANT_PROXY_ERR_KEY_ROTATION/)
    t.same(await readFile(keyFile), steadyBytes, `${phase} before publish: file unchanged`)
  }
  t.equal((await rotate('--phase', 'sideways')).code, 2, 'unknown phase: usage error')
  const dry = await rotate('--phase', 'publish', '--dry-run')
  t.equal(dry.code, 0)
  t.same(await readFile(keyFile), steadyBytes, '--dry-run writes nothing')

  // Phase 1: publish. A still signs; B is in the JWKS.
  const published = await rotate('--phase', 'publish', '--json')
  t.equal(published.code, 0, published.stderr)
  const pub = JSON.parse(published.stdout) as { after: string, keys: Array<{ kid: string }>, publishedJwk: { kid: string, d?: string } }
  const kidB = pub.publishedJwk.kid
  t.equal(pub.after, 'published')
  t.same(pub.keys.map((k) => k.kid), [kidA, kidB])
  t.equal((await stat(keyFile)).mode & 0o777, 0o600, 'the rewritten file keeps mode 0600')
  t.equal((await rotate('--phase', 'publish')).code, 1, 'publish twice: refused')
  t.equal((await rotate('--phase', 'retire')).code, 1, 'retire before switch: refused')

  await restartProxy(t)
  const tA1 = await token()
  t.equal(kidOf(tA1), kidA, 'published: A still signs')
  t.equal(await outcome(verifier, tA1), 'valid')
  t.equal(verifier.jwksFetches, 1, 'a known kid needs no fetch')
  offsetMs += 61_000 // past the key set's max-age (60 s): the verifier learns B ahead of use
  t.equal(await outcome(verifier, tA1), 'valid', 'a stale key set still answers at once')
  t.equal(verifier.jwksFetches, 2, 'max-age passed: one refetch, in the background')
  await verifier.settled()

  // Phase 2: switch. B signs; A (public only now) still verifies.
  t.equal((await rotate('--phase', 'switch')).code, 0)
  t.notMatch(await readFile(keyFile, 'utf8'), new RegExp(`kid ${kidA}: signs`), 'A no longer signs')
  t.equal((await readFile(keyFile, 'utf8')).match(/BEGIN PRIVATE KEY/g)?.length, 1, "A's private key is gone from the file")
  await restartProxy(t)
  const tB2 = await token()
  t.equal(kidOf(tB2), kidB, 'switched: B signs')
  t.equal(await outcome(verifier, tB2), 'valid', 'B verifies without a fetch (published ahead)')
  t.equal(await outcome(verifier, tA1), 'valid', 'overlap: a token signed by A before the switch still verifies')
  t.equal(verifier.jwksFetches, 2)

  t.equal(await outcome(lagging, tA1), 'valid', 'lagging app: A verifies from its cache')
  const laggingBase = lagging.jwksFetches
  t.equal(laggingBase, 1)
  offset2Ms += 31_000 // past the cooldown, long before its max-age
  t.equal(await outcome(lagging, tB2), 'unknown_kid', 'lagging app: an unknown kid (B) is refused at once, never waiting for a fetch')
  t.equal(lagging.jwksFetches, laggingBase + 1, 'and makes it refetch in the background, once the cooldown allows')
  await lagging.settled()
  t.equal(await outcome(lagging, tB2), 'valid', 'lagging app: B verifies once the refetch is in')
  t.equal(lagging.jwksFetches, laggingBase + 1, 'exactly one refetch')

  // Phase 3: retire. Only B.
  t.equal((await rotate('--phase', 'retire')).code, 0)
  await restartProxy(t)
  const tB3 = await token()
  t.equal(kidOf(tB3), kidB)
  t.equal(await outcome(verifier, tB3), 'valid')
  offsetMs += 61_000
  t.equal(await outcome(verifier, tB3), 'valid')
  const afterRetire = verifier.jwksFetches
  t.equal(afterRetire, 3, 'max-age passed: refetched the retired key set')
  await verifier.settled()
  t.equal(await outcome(verifier, tA1), 'unknown_kid', 'after retire: a token signed by A fails with unknown kid')

  // A flood of retired/unknown kids: no fetch within the cooldown, then exactly one.
  const flood = await Promise.all(Array.from({ length: 25 }, async () => await outcome(verifier, tA1)))
  t.ok(flood.every((r) => r === 'unknown_kid'))
  t.equal(verifier.jwksFetches, afterRetire, 'no refetch within the cooldown (30 s)')
  offsetMs += 30_000
  const flood2 = await Promise.all(Array.from({ length: 25 }, async () => await outcome(verifier, tA1)))
  t.ok(flood2.every((r) => r === 'unknown_kid'))
  t.equal(verifier.jwksFetches, afterRetire + 1, 'cooldown passed: one refetch for 25 concurrent unknown kids')
  await verifier.settled()
  t.equal(relayFetches, verifier.jwksFetches + lagging.jwksFetches, 'every fetch the verifiers counted reached the key set server')
  const back = await rotate()
  t.match(back.stdout, /: steady\n/, 'the file is steady again, ready for the next rotation')
})
