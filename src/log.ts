/**
 * The process logger: pino, JSON lines on stdout. Redaction is a second line of defence: code
 * never passes secrets to the logger in the first place.
 */
import pino, { type Logger } from 'pino'

/** Paths pino blanks out wherever they appear. */
export const REDACT_PATHS = [
  'databaseUrl', '*.databaseUrl', 'password', '*.password', 'key', '*.key', 'keys', '*.keys', 'secret', '*.secret',
  'req.headers.authorization', 'req.headers.cookie', 'req.headers["x-tenant-descriptor"]',
  'headers.authorization', 'headers.cookie', 'headers["x-tenant-descriptor"]'
]

/** Creates the process logger at `level`, writing to `destination` (stdout by default). */
export function createLogger (level: string, destination?: pino.DestinationStream): Logger {
  return pino({
    level,
    base: { name: 'tenant-proxy' },
    redact: { paths: REDACT_PATHS, censor: '[redacted]' },
    timestamp: pino.stdTimeFunctions.isoTime
  }, destination ?? pino.destination({ dest: 1, sync: false }))
}
