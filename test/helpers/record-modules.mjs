// Test-only preload (node --import): records every module file the process loads and writes
// the list, one URL or path a line, to $RECORD_MODULES_OUT when the process exits (not a
// TENANT_PROXY_ variable: the proxy refuses unknown ones).
// ES modules are seen by a load hook (it runs on Node's loader thread and reports here over a
// message port); CommonJS modules are read from the require cache at exit.
import { createRequire, register } from 'node:module'
import { writeFileSync } from 'node:fs'
import { MessageChannel } from 'node:worker_threads'

const out = process.env.RECORD_MODULES_OUT
const loaded = new Set()
const { port1, port2 } = new MessageChannel()
port1.on('message', (url) => loaded.add(url))
port1.unref()
const hook = `let port
export function initialize (data) { port = data.port }
export async function load (url, context, next) { port.postMessage(url); return next(url, context) }`
register(`data:text/javascript,${encodeURIComponent(hook)}`, { data: { port: port2 }, transferList: [port2] })

const require = createRequire(import.meta.url)
process.on('exit', () => {
  if (out === undefined) return
  for (const file of Object.keys(require.cache)) loaded.add(file)
  writeFileSync(out, [...loaded].join('\n') + '\n')
})
