/**
 * The Ruby kit's request-host canonicalisation (clients/ruby, TenantProxy::Descriptor::Host) against
 * the proxy's own (src/routing/host.ts, UTS #46 through Node's url.domainToASCII): for every host
 * below both give the same canonical name, or both refuse it. Ruby has no UTS #46 table, so the kit
 * approximates the mapping; this list holds it to the proxy on what people type (case, ports,
 * trailing dots, IDN in several scripts, full-width forms, ideographic full stops, sharp s, ignored
 * code points, joiners) and on what must match nothing (IP literals, bad ports, invalid A-labels).
 * Skipped, saying why, when ruby is not installed.
 */
import { execFile } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import t from 'tap'
import { canonicalHost } from '../src/routing/host.js'

const LIB = fileURLToPath(new URL('../clients/ruby/lib', import.meta.url))

const HOSTS = [
  'acme.example.com', 'ACME.Example.COM.:8443', 'acme.example.com:', 'acme.example.com:65535', 'acme.example.com:65536',
  'acme.example.com.', 'acme.example.com..', '', '.', ':80', 'a..b', '-a.example', 'a-.example', 'a_b.example', 'a b.example',
  'user@acme.example.com', '127.0.0.1', '1.2.3.4:80', '[::1]', '[::1]:8080', '::1', 'acme.123', '123', 'x.y.z:0',
  `${'a'.repeat(63)}.example`, `${'a'.repeat(64)}.example`, `${'a.'.repeat(126)}ab`, `${'a.'.repeat(127)}a`,
  'bücher.example', 'BÜCHER.example:443', 'xn--bcher-kva.example', 'XN--BCHER-KVA.example', 'xn--zz.example', 'xn--abc.example', 'xn--.example',
  'straße.example', 'STRASSE.example', 'ẞ.de', 'faß.de', 'ς.gr', 'Σ.gr', 'ΣΊΣΥΦΟΣ.gr', 'ελληνικά.gr',
  'ｅｘａｍｐｌｅ．ｃｏｍ', 'ＡＣＭＥ.example.com', 'acme。example。com', 'acme｡example．com',
  '例え.テスト', '例え。テスト', '中国.cn', '한국.kr', 'пример.рф', 'ПРИМЕР.РФ', 'مثال.إختبار', 'उदाहरण.परीक्षा', 'ไทย.th',
  '☃.net', '💩.la', 'ⅷ.example', 'ﬁ.example', '①.example', 'é.example', 'e\u0301.example', 'İ.example', 'ǅ.example',
  'a\u00adb.example', '\u00ad.example', 'a\u200bb.example', 'a\u200cb.example', 'a\u200db.example', 'a\u00a0b.example', 'a\ufeffb.example',
  'münchen.de:80', 'xn--mnchen-3ya.de', 'café.fr', 'CAFÉ.FR', 'ñandú.es', 'ĳ.nl', 'æ.dk', 'ø.no', 'å.se'
]

interface Run { code: number, stdout: string, stderr: string }

async function ruby (args: string[], input: string): Promise<Run> {
  return await new Promise((resolve) => {
    const child = execFile('ruby', args, { env: { PATH: process.env.PATH ?? '', LANG: 'C.UTF-8' }, timeout: 30_000, maxBuffer: 4 << 20 }, (err, stdout, stderr) => {
      resolve({ code: err === null ? 0 : typeof err.code === 'number' ? err.code : -1, stdout, stderr })
    })
    child.stdin?.end(input)
  })
}

const probe = await ruby(['-e', 'require "json"; print RUBY_VERSION'], '')
t.test('the Ruby kit canonicalises request hosts as the proxy does', { skip: probe.code === 0 ? false : 'ruby is not installed (apt-get install ruby)' }, async (t) => {
  const script = 'require "json"; require "tenant_proxy/descriptor/host"; print JSON.generate(JSON.parse($stdin.read).map { |h| TenantProxy::Descriptor::Host.canonical(h) })'
  const r = await ruby([`-I${LIB}`, '-e', script], JSON.stringify(HOSTS))
  t.equal(r.code, 0, r.stderr)
  const fromRuby = JSON.parse(r.stdout) as Array<string | null>
  const differ = HOSTS.flatMap((host, i) => {
    const proxy = canonicalHost(host)
    const expected = proxy.ok ? proxy.host : null
    return expected === fromRuby[i] ? [] : [`${JSON.stringify(host)}: proxy ${JSON.stringify(expected)}, Ruby ${JSON.stringify(fromRuby[i])}`]
  })
  t.same(differ, [], `${HOSTS.length} hosts, the same canonical name (or none) from both`)
  t.ok(HOSTS.filter((h) => canonicalHost(h).ok).length > 40, 'most of them are valid names')
})
