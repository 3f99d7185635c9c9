/**
 * Loads the configuration once at start: defaults, then the JSON config file, then environment
 * variables (and their `_FILE` twins); validates everything and reports every problem at once,
 * each naming the key's full path and where the bad value came from. The result is frozen.
 */
import { readFileSync } from 'node:fs'
import { DEFAULTS } from '../../config/defaults.js'
import { keysFromText } from '../descriptor/key-text.js'
import { loadKeyring } from '../descriptor/keyring.js'
import { tpError } from '../errors.js'
import { redactValue } from '../redact.js'
import type { Field } from './fields.js'
import { SCHEMA, crossChecks, isField, type Config, type SchemaTree } from './schema.js'

export type { Config } from './schema.js'

/** Where configuration comes from; main passes process.env and argv's --config. */
export interface ConfigSources {
  env: Readonly<Record<string, string | undefined>>
  /** --config on the command line; wins over TENANT_PROXY_CONFIG. */
  configPath?: string | undefined
  /** Reads a file as UTF-8; replaceable in tests. */
  readFile?: (path: string) => string
}

const ENV_PREFIX = 'TENANT_PROXY_'
const CONFIG_PATH_VAR = 'TENANT_PROXY_CONFIG'
/** Well-known names accepted beside the TENANT_PROXY_ ones (twelve-factor habit). */
const ENV_ALIASES: Readonly<Record<string, string>> = { REGISTRY_DATABASE_URL: 'registry.databaseUrl' }

/** Loads, validates and freezes the configuration, or throws TENANT_PROXY_ERR_CONFIG_INVALID listing every problem. */
export function loadConfig (sources: ConfigSources): Config {
  const readFile = sources.readFile ?? ((p: string) => readFileSync(p, 'utf8'))
  const raw = structuredClone(DEFAULTS) as unknown as Record<string, unknown>
  const origin = new Map<string, string>()
  const problems: string[] = []

  const configPath = sources.configPath ?? sources.env[CONFIG_PATH_VAR]
  if (configPath !== undefined && configPath !== '') {
    let parsed: unknown
    try {
      parsed = JSON.parse(readFile(configPath))
    } catch (err) {
      // Not err.message: V8's JSON.parse messages quote the text around the error, and a config
      // file holds secrets (registry.databaseUrl, descriptor.keys).
      const reason = err instanceof SyntaxError ? jsonProblem(err) : (err as NodeJS.ErrnoException).code ?? 'unreadable'
      throw tpError('TENANT_PROXY_ERR_CONFIG_FILE', [configPath, reason], err)
    }
    mergeFile(SCHEMA, raw, parsed, '', `config file ${configPath}`, origin, problems)
  }

  const keySource = new Map<string, string>()
  applyEnv(raw, sources.env, readFile, origin, keySource, problems)

  const config = validate(SCHEMA, raw, '', origin, problems) as Config
  if (problems.length === 0) {
    for (const [path, reason] of crossChecks(config)) problems.push(`${path}: ${reason}`)
  }
  if (problems.length > 0) throw tpError('TENANT_PROXY_ERR_CONFIG_INVALID', ['\n  ' + problems.join('\n  ')])
  // Key material is checked here, where its source is known, so a broken key names the variable
  // or file it came from (TENANT_PROXY_ERR_KEY_INVALID). Commands that need no key work without one.
  if (config.descriptor.keys.length > 0) loadKeyring(config.descriptor.keys, 'descriptor.keys', keySource.get('descriptor.keys') ?? origin.get('descriptor.keys'))
  return deepFreeze(config)
}

/** Every leaf key path with its environment variable name, in schema order (for docs and tests). */
export function configKeys (): Array<{ path: string, env: string, secret: boolean }> {
  const out: Array<{ path: string, env: string, secret: boolean }> = []
  walk(SCHEMA, '', (path, field) => out.push({ path, env: envName(path), secret: field.secret }))
  return out
}

/** TENANT_PROXY_ + the key path in SCREAMING_SNAKE_CASE: `traffic.keepAliveTimeoutMs` → TENANT_PROXY_TRAFFIC_KEEP_ALIVE_TIMEOUT_MS. */
export function envName (path: string): string {
  return ENV_PREFIX + path.split('.').map((part) => part.replace(/([a-z0-9])([A-Z])/g, '$1_$2').toUpperCase()).join('_')
}

function mergeFile (schema: SchemaTree, target: Record<string, unknown>, value: unknown, prefix: string, source: string, origin: Map<string, string>, problems: string[]): void {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    problems.push(`${prefix === '' ? '(top level)' : prefix}: must be an object (in ${source})`)
    return
  }
  for (const [key, child] of Object.entries(value)) {
    const path = prefix === '' ? key : `${prefix}.${key}`
    const node = Object.hasOwn(schema, key) ? schema[key] : undefined
    if (node === undefined) {
      problems.push(`${path}: unknown key (in ${source})`)
    } else if (isField(node)) {
      target[key] = child
      origin.set(path, source)
    } else {
      mergeFile(node, target[key] as Record<string, unknown>, child, path, source, origin, problems)
    }
  }
}

function applyEnv (raw: Record<string, unknown>, env: ConfigSources['env'], readFile: (p: string) => string, origin: Map<string, string>, keySource: Map<string, string>, problems: string[]): void {
  const known = new Map<string, { path: string, field: Field<unknown> }>()
  walk(SCHEMA, '', (path, field) => known.set(envName(path), { path, field }))
  for (const [alias, path] of Object.entries(ENV_ALIASES)) known.set(alias, { path, field: leafAt(path) })

  for (const name of Object.keys(env)) {
    if (!name.startsWith(ENV_PREFIX) || name === CONFIG_PATH_VAR) continue
    const base = name.endsWith('_FILE') ? name.slice(0, -'_FILE'.length) : name
    if (!known.has(base)) problems.push(`${name}: unknown environment variable (no such configuration key)`)
  }

  for (const [name, { path, field }] of known) {
    const direct = env[name]
    const file = env[`${name}_FILE`]
    if (direct === undefined && file === undefined) continue
    if (direct !== undefined && file !== undefined) {
      problems.push(`${path}: set by both ${name} and ${name}_FILE; set one`)
      continue
    }
    let text: string
    let source: string
    if (file !== undefined) {
      source = `${name}_FILE`
      try {
        text = readFile(file)
      } catch (err) {
        problems.push(`${path}: cannot read ${source} (${file}): ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`)
        continue
      }
      // Secret files usually end with a newline that is not part of the value.
      if (field.env !== 'keys') text = text.replace(/\r?\n$/, '')
    } else {
      source = name
      text = direct as string
    }
    if (field.env === 'keys') {
      // Key texts have their own explicit forms (src/descriptor/key-text.ts); a text that fits none
      // stops here with TENANT_PROXY_ERR_KEY_INVALID naming the variable and the file.
      const named = file === undefined ? name : `${name}_FILE (${file})`
      setAt(raw, path, keysFromText(text, named))
      origin.set(path, source)
      keySource.set(path, named)
      continue
    }
    const decoded = decodeEnv(field, text)
    if (!decoded.ok) {
      problems.push(`${path}: ${decoded.reason} (from ${source})`)
      continue
    }
    setAt(raw, path, decoded.value)
    origin.set(path, source)
  }
}

function decodeEnv (field: Field<unknown>, text: string): { ok: true, value: unknown } | { ok: false, reason: string } {
  switch (field.env) {
    case 'text':
      return { ok: true, value: text }
    case 'number':
      return { ok: true, value: /^-?\d+$/.test(text.trim()) ? Number(text.trim()) : text }
    case 'boolean': {
      const lower = text.trim().toLowerCase()
      if (['true', '1', 'yes', 'on'].includes(lower)) return { ok: true, value: true }
      if (['false', '0', 'no', 'off'].includes(lower)) return { ok: true, value: false }
      return { ok: true, value: text }
    }
    case 'list':
      if (text.trim().startsWith('[')) return parseJson(text)
      return { ok: true, value: text.split(',').map((s) => s.trim()).filter((s) => s !== '') }
    case 'json':
      return parseJson(text)
    case 'keys':
      // Decoded by applyEnv with keysFromText, which knows the source to name.
      return { ok: true, value: text }
  }
}

function parseJson (text: string): { ok: true, value: unknown } | { ok: false, reason: string } {
  try {
    return { ok: true, value: JSON.parse(text) }
  } catch (err) {
    return { ok: false, reason: `is ${jsonProblem(err)}` }
  }
}

/**
 * A JSON syntax error without the text: V8 quotes the text around the error ("Unexpected token
 * 'h', "{"key": hunter2-se"... is not valid JSON"), and that text may be a password or a key.
 * Only the position, when V8 gives one, is kept.
 */
export function jsonProblem (err: unknown): string {
  const position = /\bposition (\d+)/.exec(err instanceof Error ? err.message : '')?.[1]
  return position === undefined ? 'not valid JSON' : `not valid JSON (error at character ${position})`
}

function validate (schema: SchemaTree, raw: Record<string, unknown>, prefix: string, origin: Map<string, string>, problems: string[]): Record<string, unknown> {
  const out: Record<string, unknown> = {}
  for (const [key, node] of Object.entries(schema)) {
    const path = prefix === '' ? key : `${prefix}.${key}`
    const value = raw[key]
    if (isField(node)) {
      const r = node.check(value)
      if (r.ok) {
        out[key] = r.value
      } else {
        const from = origin.get(path) ?? 'default'
        // Secret keys are never echoed; other values are, with URL credentials redacted first
        // (an upstream origin pasted with its password), then shortened.
        const got = node.secret ? '' : `got ${truncate(JSON.stringify(redactValue(value)) ?? String(value))} `
        problems.push(`${path}: ${r.reason} (${got}from ${from})`)
      }
    } else {
      out[key] = validate(node, value as Record<string, unknown>, path, origin, problems)
    }
  }
  return out
}

function walk (schema: SchemaTree, prefix: string, visit: (path: string, field: Field<unknown>) => void): void {
  for (const [key, node] of Object.entries(schema)) {
    const path = prefix === '' ? key : `${prefix}.${key}`
    if (isField(node)) visit(path, node)
    else walk(node, path, visit)
  }
}

function leafAt (path: string): Field<unknown> {
  let node: Field<unknown> | SchemaTree = SCHEMA
  for (const part of path.split('.')) node = (node as SchemaTree)[part] as Field<unknown> | SchemaTree
  if (!isField(node)) throw new Error(`internal: ${path} is not a configuration leaf`)
  return node
}

function setAt (raw: Record<string, unknown>, path: string, value: unknown): void {
  const parts = path.split('.')
  let node = raw
  for (const part of parts.slice(0, -1)) node = node[part] as Record<string, unknown>
  node[parts[parts.length - 1] as string] = value
}

function truncate (s: string): string {
  return s.length > 80 ? `${s.slice(0, 77)}...` : s
}

function deepFreeze<T> (value: T): T {
  if (typeof value === 'object' && value !== null && !Object.isFrozen(value)) {
    Object.freeze(value)
    for (const child of Object.values(value)) deepFreeze(child)
  }
  return value
}
