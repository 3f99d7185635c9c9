import t from 'tap'
import { isTpError } from '../src/errors.js'
import { canonicalHost, requireCanonicalHost } from '../src/routing/host.js'

const label63 = 'a'.repeat(63)
const label64 = 'a'.repeat(64)
// 4 labels of 63 + 3 dots = 255; trim to exactly 253 and 254 bytes.
const name253 = `${'a'.repeat(61)}.${label63}.${label63}.${label63}`
const name254 = `${'a'.repeat(62)}.${label63}.${label63}.${label63}`

/** [input, expected canonical host] */
const accepted: Array<[string, string]> = [
  ['example.com', 'example.com'],
  ['EXAMPLE.com', 'example.com'],
  ['WWW.Example.COM.:443', 'www.example.com'],
  ['example.com.', 'example.com'],
  ['example.com:8080', 'example.com'],
  ['example.com:', 'example.com'],
  ['example.com:0', 'example.com'],
  ['example.com:65535', 'example.com'],
  ['localhost', 'localhost'],
  ['localhost:3000', 'localhost'],
  ['LOCALHOST.', 'localhost'],
  ['a.b.c.d.example.org', 'a.b.c.d.example.org'],
  ['xn--bcher-kva.example', 'xn--bcher-kva.example'],
  ['XN--BCHER-KVA.example', 'xn--bcher-kva.example'],
  ['bücher.example', 'xn--bcher-kva.example'],
  ['BÜCHER.example:80', 'xn--bcher-kva.example'],
  ['münchen.DE.', 'xn--mnchen-3ya.de'],
  ['xn--mnchen-3ya.de', 'xn--mnchen-3ya.de'],
  ['example。com', 'example.com'],
  ['日本.example', 'xn--wgv71a.example'],
  ['☃.example', 'xn--n3h.example'],
  ['a-b.example', 'a-b.example'],
  ['a--b.example', 'a--b.example'],
  ['1password.com', '1password.com'],
  ['123.example.com', '123.example.com'],
  ['example.com1', 'example.com1'],
  [`${label63}.example`, `${label63}.example`],
  [name253, name253],
  [`${name253}.`, name253],
  ['x', 'x']
]

/** [input, expected reason (exact or pattern)] */
const rejected: Array<[string, string | RegExp]> = [
  ['', 'empty host'],
  [' ', 'whitespace in host'],
  ['exa mple.com', 'whitespace in host'],
  [' example.com', 'whitespace in host'],
  ['example.com\t', 'whitespace in host'],
  ['example.com\n', 'control character in host'],
  ['ex\u0000ample.com', 'control character in host'],
  ['a..b', 'empty label'],
  ['.example.com', 'empty label'],
  ['example.com..', 'empty label'],
  ['.', 'empty host'],
  [':80', 'empty host'],
  ['-bad-.com', 'label starts or ends with a hyphen'],
  ['bad-.com', 'label starts or ends with a hyphen'],
  ['-bad.com', 'label starts or ends with a hyphen'],
  ['good.-bad', 'label starts or ends with a hyphen'],
  [`${label64}.example`, 'label longer than 63 bytes'],
  [name254, 'name longer than 253 bytes'],
  ['[::1]:8080', 'IP literal'],
  ['[::1]', 'IP literal'],
  ['[2001:db8::1]', 'IP literal'],
  ['[::1', 'unclosed IPv6 literal'],
  ['[::1]x', 'invalid port'],
  ['::1', 'IP literal'],
  ['2001:db8::1', 'IP literal'],
  ['1.2.3.4', 'IP literal'],
  ['1.2.3.4:80', 'IP literal'],
  ['127.0.0.1', 'IP literal'],
  ['10.0.0.1.', 'IP literal'],
  ['8080', 'IP literal'],
  ['example.123', 'numeric top-level label'],
  ['example.com:99999', 'invalid port'],
  ['example.com:65536', 'invalid port'],
  ['example.com:abc', 'invalid port'],
  ['example.com:-1', 'invalid port'],
  ['example.com:80:80', 'IP literal'],
  ['a_b.com', 'invalid character "_"'],
  ['*.example.com', 'invalid character "*"'],
  ['exa%6dple.com', 'invalid character "%"'],
  ['example.com/path', 'invalid character "/"'],
  ['user@example.com', 'userinfo is not allowed'],
  ['user:pass@example.com', 'userinfo is not allowed'],
  ['ex"ample.com', 'invalid character "\\""'],
  ['xn--a.example', 'invalid punycode label'],
  ['shop.xn--zz', 'invalid punycode label']
]

t.test('accepted hosts canonicalize to the registry form', async (t) => {
  for (const [input, expected] of accepted) {
    t.same(canonicalHost(input), { ok: true, host: expected }, JSON.stringify(input))
  }
})

t.test('rejected hosts say why', async (t) => {
  for (const [input, reason] of rejected) {
    const r = canonicalHost(input)
    t.equal(r.ok, false, `${JSON.stringify(input)} rejected`)
    if (!r.ok) {
      if (typeof reason === 'string') t.equal(r.reason, reason, JSON.stringify(input))
      else t.match(r.reason, reason, JSON.stringify(input))
    }
  }
  t.ok(accepted.length + rejected.length >= 70, `${accepted.length + rejected.length} cases`)
})

t.test('canonical output is a fixed point', async (t) => {
  for (const [, expected] of accepted) t.same(canonicalHost(expected), { ok: true, host: expected }, expected)
})

t.test('requireCanonicalHost throws the catalogue error with input and reason', async (t) => {
  t.equal(requireCanonicalHost('Shop.Example.'), 'shop.example')
  try {
    requireCanonicalHost('a..b')
    t.fail('should throw')
  } catch (err) {
    t.ok(isTpError(err, 'TENANT_PROXY_ERR_HOST_INVALID'))
    t.equal((err as Error).message, 'invalid host "a..b": empty label')
  }
})
