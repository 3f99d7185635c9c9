/**
 * The documentation runs as written: every command line the README, docs/, deploy/ and the client
 * READMEs show for the tenant-proxy CLI is replayed against the built binary with `--help`
 * appended. After a complete command line, `--help` checks it as strictly as a real run would
 * (unknown options, options missing their value, too few or too many arguments, unknown
 * commands) without running it, so a documented flag that does not exist fails here. Facts the
 * docs derive from config/defaults.ts (the default drain time) are checked against it too.
 */
import { execFile } from 'node:child_process'
import { readdir, readFile, stat } from 'node:fs/promises'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import t from 'tap'
import { DEFAULTS } from '../config/defaults.js'
import { CLI } from './helpers/cli.js'

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..')

/** One command line found in the docs: where, as written, and the arguments it passes the CLI. */
interface DocCommand { where: string, text: string, argv: string[] }

/** The documentation files: Markdown, and the files under deploy/ whose comments show commands. */
async function docFiles (): Promise<string[]> {
  const files = ['README.md', 'Dockerfile']
  for (const dir of ['docs']) files.push(...(await readdir(path.join(ROOT, dir))).filter((f) => f.endsWith('.md')).map((f) => `${dir}/${f}`))
  for (const client of await readdir(path.join(ROOT, 'clients'))) {
    const readme = `clients/${client}/README.md`
    if (await stat(path.join(ROOT, readme)).then(() => true, () => false)) files.push(readme)
  }
  const walk = async (dir: string): Promise<void> => {
    for (const entry of await readdir(path.join(ROOT, dir), { withFileTypes: true })) {
      const rel = `${dir}/${entry.name}`
      if (entry.isDirectory()) await walk(rel)
      // JSON has no comments and JavaScript is run by its own tests.
      else if (!/\.(json|mjs|js|ts)$/.test(entry.name)) files.push(rel)
    }
  }
  await walk('deploy')
  return files
}

/** Top-level words of the CLI's commands (serve, tenants, …), from the binary's own overview. */
async function commandWords (): Promise<Set<string>> {
  const { stdout } = await run(['--help'])
  const words = [...stdout.split('Commands:\n')[1]?.matchAll(/^ {2}([a-z]+)/gm) ?? []].map((m) => m[1] ?? '')
  if (words.length === 0) throw new Error('the CLI overview lists no commands')
  return new Set(words)
}

/**
 * Splits what follows a CLI prefix into arguments, shell-like: quotes group, `<placeholder>` is
 * one word (spaces and all), and the command ends at a shell operator, a redirection, a comment,
 * an arrow, or the quote that opened around the prefix. Synopsis notation is read as the
 * command line it stands for: `[optional]` brackets dropped, `a|b` kept as one word, `…` dropped.
 */
function splitArgs (text: string, closingQuote: string | null): string[] {
  const args: string[] = []
  let i = 0
  const at = (s: string): boolean => text.startsWith(s, i)
  for (;;) {
    while (i < text.length && /\s/.test(text[i] ?? '')) i++
    if (i >= text.length) break
    const c = text[i] ?? ''
    if (closingQuote !== null && c === closingQuote) break
    if (at('&&') || at('||') || at('| ') || at(';') || at('&') || at(')') || at('#') || at('→') || at('>') || at('2>') || /^<[\s/]/.test(text.slice(i)) || at('$(')) break
    let word = ''
    while (i < text.length && !/\s/.test(text[i] ?? '')) {
      const ch = text[i] ?? ''
      if (closingQuote !== null && ch === closingQuote) break
      if (ch === "'" || ch === '"') {
        const end = text.indexOf(ch, i + 1)
        if (end === -1) { i = text.length; break }
        word += text.slice(i + 1, end)
        i = end + 1
      } else if (ch === '<' && /^<[A-Za-z]/.test(text.slice(i))) {
        const end = text.indexOf('>', i)
        word += text.slice(i, end === -1 ? text.length : end + 1)
        i = end === -1 ? text.length : end + 1
      } else if (ch === '>' || ch === ';' || (ch === ')' && !word.includes('('))) {
        break
      } else {
        word += ch
        i++
      }
    }
    word = word.replace(/^\[+/, '').replace(/\]+$/, '').replace(/(…|\.\.\.)$/, '')
    if (word !== '') args.push(word)
    if (i < text.length && !/\s/.test(text[i] ?? '')) break
  }
  return args
}

/**
 * Command lines in one piece of code (a code span, a code block line, a comment example):
 * `tenant-proxy …`, `npx tenant-proxy …`, `node …/dist/src/main.js …`, `docker run … <image> …`,
 * `kamal accessory exec tenant-proxy "…"` and shell variables that hold `node …main.js`.
 * `bare` also accepts a line that starts with a command word (the README's CLI table).
 */
function commandsIn (code: string, where: string, opts: { words: Set<string>, aliases: readonly string[], bare: boolean, binaryName: boolean, prose?: boolean }): DocCommand[] {
  const found: DocCommand[] = []
  const prefixes = [
    String.raw`node\s+["']?[^\s"']*dist/src/main\.js["']?`,
    String.raw`kamal\s+accessory\s+exec\s+(?:-\S+\s+)*tenant-proxy`,
    ...opts.aliases.map((a) => String.raw`\$\$?\{?${a}\}?`)
  ]
  if (opts.binaryName) prefixes.push(String.raw`(?:npx\s+)?tenant-proxy`, '<image>')
  // The command starts with a word, an option or a placeholder (`docker build -t tenant-proxy .` is no CLI call).
  const prefix = new RegExp(String.raw`(^|[\s(;&|'"=])(?:${prefixes.join('|')})(?=\s+['"]?[A-Za-z<-])`, 'g')
  for (const m of code.matchAll(prefix)) {
    const opened = m[1] === "'" || m[1] === '"' ? m[1] : null
    let rest = code.slice((m.index ?? 0) + m[0].length)
    let closing = opened
    // `kamal accessory exec tenant-proxy "tenants list"`: the quoted part is the command.
    const quoted = /^\s+(['"])/.exec(rest)
    if (m[0].includes('kamal') && quoted !== null) {
      closing = quoted[1] ?? null
      rest = rest.slice(quoted[0].length)
    }
    const argv = splitArgs(rest, closing)
    // Prose such as "tenant-proxy <command> --help" names no command: nothing to check.
    if (argv.length === 0 || /^<.*>$/.test(argv[0] ?? '')) continue
    // In comments, diagrams and prose name "tenant-proxy" too (`kamal-proxy ─► tenant-proxy accessory`):
    // there only a known command word or an option makes a command line.
    if (opts.prose === true && !opts.words.has(argv[0] ?? '') && !(argv[0] ?? '').startsWith('-')) continue
    found.push({ where, text: code.slice(m.index ?? 0).trim(), argv })
  }
  if (opts.bare && found.length === 0) {
    const argv = splitArgs(code, null)
    if (opts.words.has(argv[0] ?? '')) found.push({ where, text: code.trim(), argv })
  }
  return found
}

/** Command lines in a Markdown file: code blocks, code spans, and the first column of command tables. */
function markdownCommands (file: string, text: string, words: Set<string>): DocCommand[] {
  const found: DocCommand[] = []
  const lines = text.split('\n')
  let fence: string | null = null
  let commandTable = false
  for (let n = 0; n < lines.length; n++) {
    let line = lines[n] ?? ''
    const where = `${file}:${n + 1}`
    const fenceMark = /^\s*(```|~~~)/.exec(line)?.[1]
    if (fenceMark !== undefined) {
      fence = fence === null ? fenceMark : fence === fenceMark ? null : fence
      continue
    }
    if (fence !== null) {
      while (line.endsWith('\\') && n + 1 < lines.length) line = line.slice(0, -1) + ' ' + (lines[++n] ?? '')
      // What follows a `#` in a code block is a comment (shell, Ruby, Python, YAML).
      found.push(...commandsIn(line.split(/(?:^|\s)#/)[0] ?? '', where, { words, aliases: [], bare: false, binaryName: true }))
      continue
    }
    const isTable = /^\s*\|/.test(line)
    if (!isTable) commandTable = false
    else if (/^\s*\|\s*Command\s*\|/.test(line)) commandTable = true
    // In a table, `\|` is a pipe inside a cell (GFM), code spans included.
    const cells = isTable ? line.split(/(?<!\\)\|/).slice(1) : [line]
    for (const [c, raw] of cells.entries()) {
      const cell = isTable ? raw.replaceAll('\\|', '|') : raw
      for (const span of cell.matchAll(/(`+)(.+?)\1/g)) {
        const code = span[2] ?? ''
        // A span that starts with a command word is a command line (`tenants update acme --upstream
        // canary`) unless it reads as prose (a log message such as `registry answered: …`).
        const bare = (commandTable && c === 0) || (/^[a-z]+ [a-z<]/.test(code) && !/[:,;] /.test(code))
        found.push(...commandsIn(code, where, { words, aliases: [], bare, binaryName: true }))
      }
    }
  }
  return found
}

/**
 * Command lines in a deploy file: comment lines indented as examples (`#   docker run …`) and
 * code spans in comments, with every prefix; code lines (shell in YAML, Dockerfile), with the
 * prefixes that run the entry file (`node …/main.js`, a variable holding it), because there
 * "tenant-proxy" is also a service, image and accessory name.
 */
function fileCommands (file: string, text: string, words: Set<string>): DocCommand[] {
  const found: DocCommand[] = []
  const aliases = [...text.matchAll(/\b([A-Za-z_]\w*)=["']?node\s+\S*dist\/src\/main\.js/g)].map((m) => m[1] ?? '')
  const lines = text.split('\n')
  for (let n = 0; n < lines.length; n++) {
    let line = lines[n] ?? ''
    const where = `${file}:${n + 1}`
    const comment = /^\s*#(.*)$/.exec(line)?.[1]
    if (comment !== undefined) {
      if (/^ {2,}\S/.test(comment)) {
        let example = comment
        while (example.endsWith('\\') && /^\s*#/.test(lines[n + 1] ?? '')) example = example.slice(0, -1) + ' ' + (lines[++n] ?? '').replace(/^\s*#/, '')
        found.push(...commandsIn(example, where, { words, aliases, bare: false, binaryName: true, prose: true }))
      } else {
        for (const span of comment.matchAll(/`([^`]+)`/g)) found.push(...commandsIn(span[1] ?? '', where, { words, aliases, bare: false, binaryName: true, prose: true }))
      }
      continue
    }
    while (line.endsWith('\\') && n + 1 < lines.length) line = line.slice(0, -1) + ' ' + (lines[++n] ?? '')
    const [code = '', trailing] = line.split(/\s#\s/, 2)
    found.push(...commandsIn(code, where, { words, aliases, bare: false, binaryName: false }))
    for (const span of (trailing ?? '').matchAll(/`([^`]+)`/g)) found.push(...commandsIn(span[1] ?? '', where, { words, aliases, bare: false, binaryName: true, prose: true }))
  }
  return found
}

/** Runs the built CLI; resolves with its exit code and output. */
async function run (argv: readonly string[]): Promise<{ code: number, stdout: string, stderr: string }> {
  return await new Promise((resolve) => {
    // Only PATH: the check must not depend on a registry, a config file or TENANT_PROXY_* variables.
    execFile(process.execPath, [CLI, ...argv], { env: { PATH: process.env.PATH ?? '' }, timeout: 30_000 }, (err, stdout, stderr) => {
      resolve({ code: err === null ? 0 : typeof err.code === 'number' ? err.code : 1, stdout, stderr })
    })
  })
}

/** Checks command lines (two processes at a time); returns the failures with the CLI's reason. */
async function check (commands: readonly DocCommand[]): Promise<Map<DocCommand, string>> {
  const failures = new Map<DocCommand, string>()
  const queue = [...commands]
  const worker = async (): Promise<void> => {
    for (let c = queue.shift(); c !== undefined; c = queue.shift()) {
      const r = await run([...c.argv, '--help'])
      if (r.code !== 0) failures.set(c, `exit ${r.code}: ${r.stderr.trim().split('\n')[0] ?? ''}`)
      else if (!r.stdout.startsWith('Usage: ') && c.argv.length > 1) failures.set(c, 'printed the overview, not a command\'s usage')
    }
  }
  await Promise.all([worker(), worker()])
  return failures
}

t.test('every CLI command line in the docs is accepted by the CLI as written', async (t) => {
  const words = await commandWords()
  const commands: DocCommand[] = []
  for (const file of await docFiles()) {
    const text = await readFile(path.join(ROOT, file), 'utf8')
    commands.push(...(file.endsWith('.md') ? markdownCommands(file, text, words) : fileCommands(file, text, words)))
  }
  // The same command line written in several places is checked once (and reported everywhere).
  const unique = new Map<string, DocCommand>()
  for (const c of commands) unique.set(JSON.stringify(c.argv), unique.get(JSON.stringify(c.argv)) ?? c)
  const failures = await check([...unique.values()])
  for (const c of commands) {
    const failure = failures.get(unique.get(JSON.stringify(c.argv)) ?? c)
    t.equal(failure, undefined, `${c.where}: ${c.text}`, { argv: c.argv })
  }
  // The scan itself must keep finding the docs' commands: every README CLI table row, the
  // move-a-tenant steps, the compose seed script and the image's `docker run` examples.
  t.ok(commands.length >= 40, `found ${commands.length} command lines`)
  const has = (file: string, first: string, second?: string): boolean => commands.some((c) => c.where.startsWith(`${file}:`) && c.argv[0] === first && (second === undefined || c.argv[1] === second))
  for (const [file, first, second] of [
    ['README.md', 'tenants', 'update'], ['README.md', 'descriptor', 'decode'], ['README.md', 'registry', 'import'], ['README.md', 'keys', 'generate'],
    ['docs/operations.md', 'tenants', 'update'], ['docs/operations.md', 'migrate'], ['docs/descriptor.md', 'keys', 'rotate'],
    ['deploy/docker-compose.yml', 'tenants', 'add'], ['deploy/docker-compose.yml', 'keys', 'generate'], ['Dockerfile', 'tenants', 'list']
  ] as const) t.ok(has(file, first, second), `found \`${[first, second].join(' ').trim()}\` in ${file}`)
})

t.test('every command\'s own usage line (its --help) is a command line the CLI accepts', async (t) => {
  const { stdout } = await run(['--help'])
  const names = [...stdout.split('Commands:\n')[1]?.matchAll(/^ {2}([a-z]+(?: [a-z]+)?) {2,}/gm) ?? []].map((m) => m[1] ?? '')
  t.ok(names.length >= 10, `${names.length} commands`)
  const words = await commandWords()
  const usages: DocCommand[] = []
  const helps: string[] = []
  // Two processes at a time, as in check().
  for (let i = 0; i < names.length; i += 2) helps.push(...(await Promise.all(names.slice(i, i + 2).map(async (name) => (await run([...name.split(' '), '--help'])).stdout))))
  for (const [i, name] of names.entries()) {
    const usage = /^Usage: (.*)$/m.exec(helps[i] ?? '')?.[1] ?? ''
    const found = commandsIn(usage, `${name} --help`, { words, aliases: [], bare: false, binaryName: true })
    t.equal(found.length, 1, `${name} --help prints a usage line: ${usage}`)
    usages.push(...found)
  }
  const failures = await check(usages)
  for (const c of usages) t.equal(failures.get(c), undefined, `${c.where}: ${c.text}`, { argv: c.argv })
})

t.test('the check catches a documented flag, argument or command that does not exist', async (t) => {
  const words = await commandWords()
  const doc = [
    'Move it: `tenant-proxy tenants update acme --database-host db2.internal --database-port 5432`.',
    '`tenant-proxy tenants state acme` (the state is missing)',
    '`tenant-proxy tenants state acme active suspended` (one state too many)',
    '`tenant-proxy tenant list` (no such command)',
    '`tenant-proxy tenants update acme --db-host` (the flag lacks its value)',
    '',
    '| Command | What it does |',
    '|---|---|',
    '| `tenants update <slug> [--db-host] [--db-port <port>]` | a flag without its value |',
    '| `domains add <slug> <host> [--primary <kind>]` | a boolean flag given a value |',
    '| `keys generate [--colour red\\|blue]` | unknown flag in a table |'
  ].join('\n')
  const bad = markdownCommands('synthetic.md', doc, words)
  t.equal(bad.length, 8, 'every synthetic line is found')
  const failures = await check(bad)
  for (const c of bad) t.ok(failures.has(c), `refused: ${c.text}`, { reason: failures.get(c) })
  const good = markdownCommands('synthetic.md', '`tenant-proxy tenants update acme --db-host db2.internal --db-port 5432` and\n| Command | x |\n|---|---|\n| `tenants state <slug> active\\|suspended\\|maintenance` | y |', words)
  t.equal(good.length, 2)
  t.same([...(await check(good)).values()], [], 'the corrected lines pass')
})

t.test('the default drain time stated in the docs is the one config/defaults.ts gives', async (t) => {
  const delayS = DEFAULTS.shutdown.drainDelayMs / 1000
  const graceS = DEFAULTS.shutdown.graceMs / 1000
  // Statements of the form "3 s + 5 s = 8 s by default" (or "defaults (3 s + 5 s = 8 s)").
  const statement = /(\d+(?:\.\d+)?) s \+ (?:at most )?(\d+(?:\.\d+)?) s = (\d+(?:\.\d+)?) s/g
  for (const file of ['docs/operations.md', 'deploy/prometheus/alerts.yml']) {
    const text = await readFile(path.join(ROOT, file), 'utf8')
    const found = [...text.matchAll(statement)].filter((m) => /default/.test(text.slice(Math.max(0, (m.index ?? 0) - 80), (m.index ?? 0) + m[0].length + 40)))
    t.ok(found.length > 0, `${file} states the default drain time`)
    for (const m of found) t.same([Number(m[1]), Number(m[2]), Number(m[3])], [delayS, graceS, delayS + graceS], `${file}: "${m[0]}"`)
  }
})
