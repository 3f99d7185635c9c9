/**
 * The process logger: pino, JSON lines on stdout. Redaction is a second line of defence: code
 * never passes secrets to the logger in the first place.
 */
import pino, { type Logger } from 'pino'

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

/** Creates the process logger at `level`, writing to `destination` (buffered stdout by default). */
export function createLogger (level: string, destination?: pino.DestinationStream): Logger {
  let stream = destination
  if (stream === undefined) {
    // One write(2) per request line costs more CPU than proxying the request; buffer up to 8 KiB
    // and flush at least every second (and at shutdown, see server.ts).
    const buffered = pino.destination({ dest: 1, sync: false, minLength: 8_192 })
    setInterval(() => buffered.flush(), LOG_FLUSH_INTERVAL_MS).unref()
    stream = buffered
  }
  return pino({
    level,
    base: { name: 'tenant-proxy' },
    redact: { paths: REDACT_PATHS, censor: '[redacted]' },
    // Epoch milliseconds: formatting an ISO date costs more per request line than the rest of it.
    timestamp: pino.stdTimeFunctions.epochTime
  }, stream)
}
