import t from 'tap'
import { tpError, isTpError, ERRORS, EXIT } from '../src/errors.js'

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

t.test('the catalogue is the one source of CLI exit codes', async (t) => {
  t.equal(tpError('TENANT_PROXY_ERR_CONFIG_INVALID', ['x']).exit, EXIT.config)
  t.equal(tpError('TENANT_PROXY_ERR_KEY_INVALID', ['x', 'y']).exit, EXIT.config)
  t.equal(tpError('TENANT_PROXY_ERR_CLI_USAGE', ['x']).exit, EXIT.usage)
  t.equal(tpError('TENANT_PROXY_ERR_IMPORT_INVALID', ['x']).exit, EXIT.usage)
  t.equal(tpError('TENANT_PROXY_ERR_WAIT_TIMEOUT', []).exit, EXIT.waitTimeout)
  t.equal(tpError('TENANT_PROXY_ERR_TENANT_NOT_FOUND', ['x']).exit, EXIT.failed, 'a refused operation by default')
  const { readFile } = await import('node:fs/promises')
  const run = await readFile(new URL('../src/cli/run.ts', import.meta.url), 'utf8')
  t.notMatch(run, /TENANT_PROXY_ERR_/, 'the CLI maps no code to an exit code of its own')
})
