/**
 * docs/design.md stays true: its module map lists every module of src/ and config/, one line
 * each, and names no module that does not exist.
 */
import { readdir, readFile } from 'node:fs/promises'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import t from 'tap'

const ROOT = fileURLToPath(new URL('..', import.meta.url))

async function modules (dir: string): Promise<string[]> {
  const out: string[] = []
  for (const entry of await readdir(path.join(ROOT, dir), { withFileTypes: true })) {
    const rel = `${dir}/${entry.name}`
    if (entry.isDirectory()) out.push(...await modules(rel))
    else if (entry.name.endsWith('.ts') && !entry.name.endsWith('.d.ts')) out.push(rel)
  }
  return out
}

t.test('the module map lists every module, and only modules that exist', async (t) => {
  const doc = await readFile(path.join(ROOT, 'docs/design.md'), 'utf8')
  const block = /## Module map[\s\S]*?```\n([\s\S]*?)```/.exec(doc)?.[1] ?? ''
  const listed = block.split('\n').map((l) => l.split(/\s+/)[0] ?? '').filter((p) => p.endsWith('.ts'))
  const actual = [...await modules('src'), ...await modules('config')].sort()
  t.same([...listed].sort(), actual, 'one line per module')
  t.equal(new Set(listed).size, listed.length, 'no module listed twice')
})
