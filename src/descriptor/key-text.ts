/**
 * Descriptor keys given as text: TENANT_PROXY_DESCRIPTOR_KEYS, the file TENANT_PROXY_DESCRIPTOR_KEYS_FILE
 * names, or the string form of the verifier kit's `keys`. The text is one of three explicit forms,
 * and anything else is refused (TENANT_PROXY_ERR_KEY_INVALID naming the source, never quoting it):
 *
 *   [{"kid"?, "alg"?, "key"}, …]   a JSON list, as descriptor.keys in a config file
 *   hs256:<secret>                 one HS256 secret (the prefix is the only way to say HS256 here)
 *   PEM blocks                     the first signs; `#` comment lines, blank lines and the public
 *                                  JWK line `keys generate` prints may sit between them
 *
 * No form falls back to another: a key file whose PEM armour is damaged, a JSON value that does not
 * parse or is a single object, or a bare string are errors, never an HMAC secret made of whatever
 * text was there (private key included).
 */
import { tpError } from '../errors.js'
import type { KeyConfig } from './keyring.js'

/** The prefix that makes a one-line key text an HS256 secret. */
export const HS256_PREFIX = 'hs256:'

/** A whole PEM block whose END label matches its BEGIN label. */
const PEM_BLOCK = /-----BEGIN ([A-Z0-9 ]+)-----[\s\S]*?-----END \1-----/g
/** What is left of PEM armour after the whole blocks are taken out: a damaged BEGIN/END line. */
const ARMOUR_FRAGMENT = /-{3,}|\b(?:BEGIN|END)\b|PRIVATE KEY|PUBLIC KEY|CERTIFICATE/

/** Parses a key text; `source` names it in errors (`TENANT_PROXY_DESCRIPTOR_KEYS_FILE (/run/secrets/keys.pem)`). */
export function keysFromText (text: string, source: string): KeyConfig[] {
  const trimmed = text.trim()
  if (trimmed === '') fail(source, 'is empty')
  if (trimmed.startsWith('[') || trimmed.startsWith('{')) return jsonKeys(trimmed, source)

  // Docker env files (Kamal secrets among them) cannot carry newlines, so a PEM often arrives with
  // literal "\n" sequences; PEM armour and base64 never contain a backslash, so unescaping is safe.
  const unescaped = !text.includes('\n') && text.includes('-----') ? text.replaceAll('\\n', '\n') : text
  const lines = unescaped.split(/\r?\n/)
  const content = lines.map((line, i) => ({ line: line.trim(), n: i + 1 })).filter(({ line }) => line !== '' && !line.startsWith('#'))

  const first = content[0]
  if (first !== undefined && first.line.toLowerCase().startsWith(HS256_PREFIX)) {
    if (content.length > 1) fail(source, `an ${HS256_PREFIX} secret is one line; line ${content[1]?.n ?? 0} is more (several keys go in a JSON list)`)
    const secret = first.line.slice(HS256_PREFIX.length).trim()
    if (secret === '') fail(source, `the ${HS256_PREFIX} secret is empty`)
    return [{ alg: 'HS256', key: secret }]
  }

  const blocks = [...unescaped.matchAll(PEM_BLOCK)]
  // Blank out the whole blocks (keeping their line breaks, so line numbers stay right); what is
  // left may only be blank lines, # comments and the public JWK line.
  const rest = unescaped.replace(PEM_BLOCK, (block) => block.replace(/[^\n]/g, '')).split(/\r?\n/)
    .map((line, i) => ({ line: line.trim(), n: i + 1 }))
    .filter(({ line }) => line !== '' && !line.startsWith('#') && !isPublicJwkLine(line))
  const damaged = rest.find(({ line }) => ARMOUR_FRAGMENT.test(line))
  if (damaged !== undefined) fail(source, `has damaged PEM armour at line ${damaged.n}: a -----BEGIN …----- or -----END …----- line is incomplete, misspelt or has no partner`)
  // `openssl ecparam -genkey` writes an EC PARAMETERS block before the key; it carries no key.
  const pems = blocks.filter((m) => m[1] !== 'EC PARAMETERS').map((m) => m[0])
  if (pems.length === 0) fail(source, `holds no PEM key; an HS256 secret must be marked as one: ${HS256_PREFIX}<secret> (or a JSON list with "alg": "HS256")`)
  const stray = rest[0]
  if (stray !== undefined) fail(source, `line ${stray.n} is not part of a PEM block; beside PEM blocks a key text holds only # comments and blank lines`)
  return pems.map((key) => ({ key }))
}

function jsonKeys (text: string, source: string): KeyConfig[] {
  let parsed: unknown
  try {
    parsed = JSON.parse(text)
  } catch (err) {
    // Not err.message: V8 quotes the text around the error, and this text is key material.
    const position = /\bposition (\d+)/.exec(err instanceof Error ? err.message : '')?.[1]
    fail(source, `is not valid JSON${position === undefined ? '' : ` (error at character ${position})`}; a JSON key text is a list [{"key": …}, …]`)
  }
  if (!Array.isArray(parsed)) fail(source, 'is a single JSON object; descriptor keys are a list: [{"key": …}]')
  // Each entry's shape is checked by the config schema and the keyring, which name it by index.
  return parsed as KeyConfig[]
}

/** The public JWK line `keys generate` prints after the key: a JSON object with kty and no private member. */
function isPublicJwkLine (line: string): boolean {
  if (!line.startsWith('{') || !line.endsWith('}')) return false
  try {
    const jwk = JSON.parse(line) as Record<string, unknown>
    return typeof jwk === 'object' && jwk !== null && typeof jwk.kty === 'string' && !('d' in jwk) && !('k' in jwk)
  } catch {
    return false
  }
}

function fail (source: string, reason: string): never {
  throw tpError('TENANT_PROXY_ERR_KEY_INVALID', [source, reason])
}
