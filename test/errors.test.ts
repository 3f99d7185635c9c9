import t from 'tap'
import { tpError, isTpError, ERRORS } from '../src/errors.js'

t.test('catalogue errors carry code, status and formatted message', async (t) => {
  const err = tpError('TENANT_PROXY_ERR_DOMAIN_TAKEN', ['a.example', 'acme'])
  t.equal(err.code, 'TENANT_PROXY_ERR_DOMAIN_TAKEN')
  t.equal(err.status, 409)
  t.equal(err.message, 'domain a.example already belongs to tenant acme')
  t.ok(isTpError(err, 'TENANT_PROXY_ERR_DOMAIN_TAKEN'))
  t.notOk(isTpError(new Error('x')))
  t.ok(Object.keys(ERRORS).every((code) => code.startsWith('TENANT_PROXY_ERR_')))
})

t.test('every catalogue code is documented in docs/errors.md', async (t) => {
  const { readFile } = await import('node:fs/promises')
  const doc = await readFile(new URL('../docs/errors.md', import.meta.url), 'utf8')
  for (const code of Object.keys(ERRORS)) t.ok(doc.includes(`\`${code}\``), code)
})
