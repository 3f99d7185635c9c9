/**
 * The process logger: pino, JSON lines on stdout. Redaction is a second line of defence: code
 * never passes secrets to the logger in the first place.
 */
import pino, { type Logger } from 'pino'
import { redactUrls } from './redact.js'

/**
 * Paths pino blanks out. Exact paths only: wildcard paths make pino walk every logged object,
 * which costs more per request line than the rest of the logging.
 */
export const REDACT_PATHS = [
  'databaseUrl', 'password', 'key', 'keys', 'secret', 'config',
  'req.headers.authorization', 'req.headers.cookie', 'req.headers["x-tenant-descriptor"]',
  'headers.authorization', 'headers.cookie', 'headers["x-tenant-descriptor"]'
]

/** Longest a log line waits in the buffer before it is written (like nginx's access_log flush=1s). */
export const LOG_FLUSH_INTERVAL_MS = 1_000

/**
 * Collects log lines and hands them to the file writer in ~16 KiB batches. sonic-boom (pino's
 * writer) measures its whole pending buffer on every write, so feeding it line by line costs
 * more per line the fuller the buffer: several µs per request at proxy rates. Batching first
 * keeps a line's cost at an array push.
 */
class LineBatcher {
  #parts: string[] = []
  #chars = 0

  constructor (readonly sink: pino.DestinationStream & { flush (cb?: (err?: Error) => void): void, flushSync (): void }, readonly batchChars: number) {}

  /** Takes one log line. */
  write (line: string): void {
    this.#parts.push(line)
    this.#chars += line.length
    if (this.#chars >= this.batchChars) this.#push()
  }

  /** Hands pending lines over and lets the writer write them (pino's logger.flush calls this). */
  flush (cb?: (err?: Error) => void): void {
    this.#push()
    this.sink.flush(cb)
  }

  /** Writes everything now (process exit). */
  flushSync (): void {
    this.#push()
    this.sink.flushSync()
  }

  #push (): void {
    if (this.#parts.length === 0) return
    const chunk = this.#parts.join('')
    this.#parts = []
    this.#chars = 0
    this.sink.write(chunk)
  }
}

/** Creates the process logger at `level`, writing to `destination` (buffered stdout by default). */
export function createLogger (level: string, destination?: pino.DestinationStream): Logger {
  let stream = destination
  if (stream === undefined) {
    // One write(2) per request line costs more CPU than proxying the request: batch lines and
    // flush at least every second (and at shutdown, see server.ts; at exit, below).
    const batcher = new LineBatcher(pino.destination({ dest: 1, sync: false, minLength: 0, maxWrite: 65_536 }), 16_384)
    setInterval(() => batcher.flush(), LOG_FLUSH_INTERVAL_MS).unref()
    process.once('exit', () => {
      try { batcher.flushSync() } catch { /* stdout gone: nothing left to tell */ }
    })
    stream = batcher
  }
  return pino({
    level,
    base: { name: 'tenant-proxy' },
    redact: { paths: REDACT_PATHS, censor: '[redacted]' },
    serializers: { err: serializeError, error: serializeError },
    hooks: { logMethod: redactMessage },
    // Epoch milliseconds: formatting an ISO date costs more per request line than the rest of it.
    timestamp: pino.stdTimeFunctions.epochTime
  }, stream)
}

/**
 * pino's error serializer, then every byte buffer in the result replaced by its length and every
 * URL's userinfo by `***`. Node's HTTP parser errors carry the bytes they refused as
 * `err.rawPacket` (the client's Authorization and Cookie headers among them), and library errors
 * may carry buffers or connection strings of their own: an error's code, offsets and sizes are
 * what an operator needs, never its bytes.
 */
export function serializeError (err: unknown): unknown {
  const serialized: unknown = err instanceof Error ? pino.stdSerializers.err(err) : err
  return scrubLogValue(serialized, 0)
}

/**
 * The message strings of a log call with URL credentials redacted. An Error logged on its own
 * would become the line's `msg` unredacted (pino copies err.message), and Fastify's default error
 * handler logs err.message as the message: both go through here.
 */
function redactMessage (this: Logger, args: unknown[], method: (...a: unknown[]) => void): void {
  const first = args[0]
  if (first instanceof Error && typeof args[1] !== 'string') {
    method.apply(this, [{ err: first }, redactUrls(first.message)])
    return
  }
  for (let i = 0; i < args.length; i++) {
    const arg = args[i]
    if (typeof arg === 'string') args[i] = redactUrls(arg)
  }
  method.apply(this, args)
}

function scrubLogValue (value: unknown, depth: number): unknown {
  if (typeof value === 'string') return redactUrls(value)
  if (typeof value !== 'object' || value === null) return value
  if (ArrayBuffer.isView(value)) return bytesPlaceholder(value.byteLength)
  if (value instanceof ArrayBuffer) return bytesPlaceholder(value.byteLength)
  if (depth > 6) return '[…]'
  if (Array.isArray(value)) {
    // A buffer that went through JSON once (or a byte array built by hand) is still the bytes.
    if (value.length > 0 && value.every((v) => Number.isInteger(v) && (v as number) >= 0 && (v as number) <= 255)) return bytesPlaceholder(value.length)
    return value.map((v: unknown) => scrubLogValue(v, depth + 1))
  }
  const record = value as Record<string, unknown>
  if (record.type === 'Buffer' && Array.isArray(record.data)) return bytesPlaceholder(record.data.length)
  const out: Record<string, unknown> = {}
  for (const key of Object.keys(record)) out[key] = scrubLogValue(record[key], depth + 1)
  return out
}

function bytesPlaceholder (length: number): string {
  return `[${length} bytes]`
}

/** The fields of one access-log line (one per traffic request). */
export interface AccessLine {
  reqId: string
  host: string
  tenant: string | null
  outcome: string
  status: number
  ms: number
  upstreamMs: number | null
}

/**
 * A writer for access lines, or null when `info` is off. The line is built by hand and written
 * straight to the logger's destination: pino's generic serializer costs several µs per line on a
 * path where the proxy's whole budget is about 100 µs. Same JSON shape as the logger's own lines;
 * no field here can hold a secret, so redaction has nothing to do.
 */
export function accessLogWriter (logger: Logger): ((line: AccessLine) => void) | null {
  if (!logger.isLevelEnabled('info')) return null
  const stream = (logger as unknown as Record<symbol, { write (s: string): void }>)[pino.symbols.streamSym]
  if (stream === undefined) return null
  const prefix = `{"level":${logger.levels.values.info ?? 30},"time":`
  const bindings = JSON.stringify(logger.bindings()).slice(1, -1)
  const base = bindings === '' ? '' : `,${bindings}`
  return (l) => {
    stream.write(`${prefix}${Date.now()}${base},"reqId":${JSON.stringify(l.reqId)},"host":${JSON.stringify(l.host)},"tenant":${l.tenant === null ? 'null' : JSON.stringify(l.tenant)},"outcome":"${l.outcome}","status":${l.status},"ms":${l.ms},"upstreamMs":${l.upstreamMs ?? 'null'},"msg":"request"}\n`)
  }
}
