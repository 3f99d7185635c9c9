/**
 * Field validators for the configuration schema. Each takes the raw value (from the defaults, the
 * config file or an environment variable already decoded) and returns the typed value or a reason.
 */

/** A schema leaf: how to check a value and how to decode it from an environment variable. */
export interface Field<T> {
  /** Returns the typed value, or a string saying what is wrong. */
  check (value: unknown): { ok: true, value: T } | { ok: false, reason: string }
  /** How an environment variable's text becomes a raw value. */
  readonly env: 'text' | 'number' | 'boolean' | 'list' | 'json' | 'keys'
  /** Secrets are never echoed in errors or logs. */
  readonly secret: boolean
}

type Result<T> = { ok: true, value: T } | { ok: false, reason: string }

const ok = <T>(value: T): Result<T> => ({ ok: true, value })
const bad = <T>(reason: string): Result<T> => ({ ok: false, reason })

/** A string, optionally matching a pattern (described for the error message). */
export function text (opts: { pattern?: RegExp, describe?: string, secret?: boolean, allowEmpty?: boolean } = {}): Field<string> {
  return {
    env: 'text',
    secret: opts.secret ?? false,
    check (value) {
      if (typeof value !== 'string') return bad('must be a string')
      if (value === '' && opts.allowEmpty !== true) return bad('must not be empty')
      if (opts.pattern !== undefined && !opts.pattern.test(value)) return bad(`must be ${opts.describe ?? `like ${String(opts.pattern)}`}`)
      return ok(value)
    }
  }
}

/** One of a fixed set of strings. */
export function oneOf<T extends string> (choices: readonly T[]): Field<T> {
  return {
    env: 'text',
    secret: false,
    check (value) {
      return typeof value === 'string' && (choices as readonly string[]).includes(value)
        ? ok(value as T)
        : bad(`must be one of ${choices.join(', ')}`)
    }
  }
}

/** An integer within [min, max]. */
export function integer (min: number, max: number): Field<number> {
  return {
    env: 'number',
    secret: false,
    check (value) {
      return typeof value === 'number' && Number.isInteger(value) && value >= min && value <= max
        ? ok(value)
        : bad(`must be an integer from ${min} to ${max}`)
    }
  }
}

/** A TCP port; 0 lets the kernel pick one. */
export const port = (): Field<number> => integer(0, 65_535)

/** true or false. */
export function boolean (): Field<boolean> {
  return {
    env: 'boolean',
    secret: false,
    check (value) {
      return typeof value === 'boolean' ? ok(value) : bad('must be true or false')
    }
  }
}

/** null or the inner field's type. */
export function nullable<T> (inner: Field<T>): Field<T | null> {
  return {
    env: inner.env,
    secret: inner.secret,
    check (value) {
      return value === null ? ok(null) : inner.check(value)
    }
  }
}

/** A list whose every element passes `item`; errors name the element index. */
export function list<T> (item: Field<T>, opts: { minItems?: number } = {}): Field<readonly T[]> {
  return {
    env: 'list',
    secret: item.secret,
    check (value) {
      if (!Array.isArray(value)) return bad('must be a list')
      if (value.length < (opts.minItems ?? 0)) return bad(`must have at least ${opts.minItems ?? 0} item(s)`)
      const out: T[] = []
      for (const [i, element] of value.entries()) {
        const r = item.check(element)
        if (!r.ok) return bad(`item [${i}] ${r.reason}`)
        out.push(r.value)
      }
      return ok(out)
    }
  }
}

/** An object of name → `item`, names matching `key`. */
export function record<T> (key: RegExp, item: Field<T>): Field<Readonly<Record<string, T>>> {
  return {
    env: 'json',
    secret: false,
    check (value) {
      if (typeof value !== 'object' || value === null || Array.isArray(value)) return bad('must be an object')
      const out: Record<string, T> = {}
      for (const [name, element] of Object.entries(value)) {
        if (!key.test(name)) return bad(`name ${JSON.stringify(name)} must match ${String(key)}`)
        const r = item.check(element)
        if (!r.ok) return bad(`[${JSON.stringify(name)}] ${r.reason}`)
        out[name] = r.value
      }
      return ok(out)
    }
  }
}

/** An absolute http(s) URL without path, query or credentials: an upstream origin. */
export function httpOrigin (): Field<string> {
  return {
    env: 'text',
    secret: false,
    check (value) {
      if (typeof value !== 'string') return bad('must be a URL string')
      let url: URL
      try {
        url = new URL(value)
      } catch {
        // No value here: the loader prints it, with any credentials redacted.
        return bad('must be an http:// or https:// URL')
      }
      if (url.protocol !== 'http:' && url.protocol !== 'https:') return bad('must use http:// or https://')
      if (url.username !== '' || url.password !== '') return bad('must not carry credentials')
      if ((url.pathname !== '/' && url.pathname !== '') || url.search !== '' || url.hash !== '') return bad('must be an origin without path, query or fragment')
      return ok(url.origin)
    }
  }
}

/** A postgres:// URL (secret: it usually carries a password). */
export function postgresUrl (): Field<string> {
  return {
    env: 'text',
    secret: true,
    check (value) {
      if (typeof value !== 'string') return bad('must be a postgres:// URL string')
      try {
        const url = new URL(value)
        if (url.protocol !== 'postgres:' && url.protocol !== 'postgresql:') return bad('must start with postgres:// or postgresql://')
      } catch {
        return bad('must be a postgres:// URL')
      }
      return ok(value)
    }
  }
}

/** Descriptor signing keys: shape only; key material is parsed by the keyring at start. */
export function signingKeys (): Field<ReadonlyArray<{ kid: string | null, alg: 'ES256' | 'HS256' | null, key: string }>> {
  return {
    env: 'keys',
    secret: true,
    check (value) {
      if (!Array.isArray(value)) return bad('must be a list of { kid?, alg?, key }')
      const out: Array<{ kid: string | null, alg: 'ES256' | 'HS256' | null, key: string }> = []
      for (const [i, element] of value.entries()) {
        if (typeof element !== 'object' || element === null || Array.isArray(element)) return bad(`item [${i}] must be an object { kid?, alg?, key }`)
        const { kid = null, alg = null, key, ...rest } = element as Record<string, unknown>
        const unknown = Object.keys(rest)
        if (unknown.length > 0) return bad(`item [${i}] has unknown key ${unknown[0] ?? ''}`)
        if (typeof key !== 'string' || key === '') return bad(`item [${i}].key must be a non-empty string`)
        if (kid !== null && (typeof kid !== 'string' || !/^[\x21-\x7e]{1,128}$/.test(kid))) return bad(`item [${i}].kid must be 1-128 printable characters`)
        if (alg !== null && alg !== 'ES256' && alg !== 'HS256') return bad(`item [${i}].alg must be ES256 or HS256`)
        out.push({ kid, alg, key })
      }
      return ok(out)
    }
  }
}
