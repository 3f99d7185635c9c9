/**
 * The one classifier of upstream failures (src/proxy/upstream-errors.ts), and the request-target
 * rules (src/proxy/request-target.ts): tables, no server.
 */
import t from 'tap'
import { errors } from 'undici'
import { targetProblem } from '../src/proxy/request-target.js'
import { classifyUpstreamError, errorCode } from '../src/proxy/upstream-errors.js'

const coded = (code: string, cause?: unknown): Error => Object.assign(new Error(code), { code }, cause === undefined ? {} : { cause })

t.test('classifyUpstreamError: kind, connection (retry and ejection) and the answer agree', async (t) => {
  const cases: Array<[string, unknown, string, boolean, string]> = [
    ['refused', coded('ECONNREFUSED'), 'connect', true, 'TENANT_PROXY_ERR_UPSTREAM_CONNECT'],
    ['DNS', coded('ENOTFOUND'), 'connect', true, 'TENANT_PROXY_ERR_UPSTREAM_CONNECT'],
    ['connect timeout', new errors.ConnectTimeoutError(), 'connect', true, 'TENANT_PROXY_ERR_UPSTREAM_CONNECT'],
    ['bad certificate', coded('ERR_TLS_CERT_ALTNAME_INVALID'), 'connect', true, 'TENANT_PROXY_ERR_UPSTREAM_CONNECT'],
    ['reset', coded('ECONNRESET'), 'reset', true, 'TENANT_PROXY_ERR_UPSTREAM_FAILED'],
    ['undici socket error wrapping a reset', new errors.SocketError('other side closed'), 'reset', true, 'TENANT_PROXY_ERR_UPSTREAM_FAILED'],
    ['undici socket error, cause first', coded('UND_ERR_SOCKET', coded('EPIPE')), 'reset', true, 'TENANT_PROXY_ERR_UPSTREAM_FAILED'],
    ['headers timeout', new errors.HeadersTimeoutError(), 'timeout', false, 'TENANT_PROXY_ERR_UPSTREAM_TIMEOUT'],
    ['body timeout', new errors.BodyTimeoutError(), 'timeout', false, 'TENANT_PROXY_ERR_UPSTREAM_TIMEOUT'],
    ['aborted', new errors.RequestAbortedError(), 'other', false, 'TENANT_PROXY_ERR_UPSTREAM_FAILED'],
    ['no code at all', new Error('?'), 'other', false, 'TENANT_PROXY_ERR_UPSTREAM_FAILED'],
    ['not an error', 'text', 'other', false, 'TENANT_PROXY_ERR_UPSTREAM_FAILED'],
    ['a code deep in the chain', new Error('wrapper', { cause: new Error('middle', { cause: coded('EHOSTUNREACH') }) }), 'connect', true, 'TENANT_PROXY_ERR_UPSTREAM_CONNECT']
  ]
  for (const [name, err, kind, connection, answer] of cases) {
    const f = classifyUpstreamError(err)
    t.same([f.kind, f.connection, f.answer], [kind, connection, answer], name)
  }
  const loop: Error & { cause?: unknown } = new Error('loop')
  loop.cause = loop
  t.equal(errorCode(loop), '', 'a cause cycle ends')
})

t.test('targetProblem: paths forwarded as sent, the rest refused', async (t) => {
  const ok = ['/', '/a/b?c=d', '/file.css', '/a.b/c..d', '/%2Fx', '/q?x=..&y=%20', '/caf%C3%A9', '/a/./b', '/?a=1&a=2;b']
  for (const target of ok) t.equal(targetProblem(target), null, target)
  const refused: Array<[string, RegExp]> = [
    ['*', /must be a path/],
    ['acme.example.com:443', /must be a path/],
    ['', /must be a path/],
    ['/../etc/passwd', /\.\. segments/],
    ['/a/%2e%2e/b', /\.\. segments/],
    ['/a\\..\\b', /\.\. segments/],
    ['//evil.example/x', /must not start with \/\//],
    ['/\\evil.example', /must not start with \/\//],
    ['/%zz', /malformed percent-encoding/],
    ['/ok?q=%zz', /malformed percent-encoding/]
  ]
  for (const [target, reason] of refused) t.match(targetProblem(target), reason, JSON.stringify(target))
})
