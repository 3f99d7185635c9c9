/**
 * Redaction of credentials in text that reaches a person: configuration errors, CLI errors and
 * log lines. URLs are the usual carrier (`postgres://user:password@host/db`, an upstream origin
 * pasted with its basic-auth password), so every URL's userinfo becomes `***`.
 */

/**
 * A scheme and `//`, then everything up to the last `@` before the next whitespace: the userinfo.
 * Greedy on purpose: a password may hold `/`, `?`, `#` or `@` unencoded, and the WHATWG parser
 * would then read part of it as the host; cutting to the last `@` may hide part of a path with
 * an `@` in it, which is the cheaper mistake in an error message.
 */
const USERINFO = /\b([a-z][a-z0-9+.-]*:\/\/)[^\s@]*(?:@[^\s@]*)*@/gi

/** The text with the userinfo of every URL in it replaced by `***`. */
export function redactUrls (text: string): string {
  return text.includes('@') ? text.replace(USERINFO, '$1***@') : text
}

/** A copy of a JSON-like value with `redactUrls` applied to every string in it (keys too). */
export function redactValue (value: unknown, depth = 0): unknown {
  if (typeof value === 'string') return redactUrls(value)
  if (typeof value !== 'object' || value === null) return value
  if (depth > 8) return '[…]'
  if (Array.isArray(value)) return value.map((v: unknown) => redactValue(v, depth + 1))
  const out: Record<string, unknown> = {}
  for (const [k, v] of Object.entries(value)) out[redactUrls(k)] = redactValue(v, depth + 1)
  return out
}
