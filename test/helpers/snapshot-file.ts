/**
 * Reads and rewrites last-known-good snapshot files the way a test needs to (a header field
 * changed with a valid checksum, a byte of the body flipped), for both layouts: format 4 (a JSON
 * header line, `bodyBytes` of binary columns, a JSON trailer line) and formats 1–3 (three JSON
 * lines). The checksum is the SHA-256 of everything before the trailer.
 */
import { createHash } from 'node:crypto'

export interface SnapshotParts { header: Record<string, unknown>, body: Buffer }

export function splitSnapshot (file: Buffer): SnapshotParts {
  const nl = file.indexOf(0x0a)
  const header = JSON.parse(file.subarray(0, nl).toString('utf8')) as Record<string, unknown>
  const start = nl + 1
  const end = header.formatVersion === 4 ? start + (header.bodyBytes as number) : file.indexOf(0x0a, start) + 1
  return { header, body: file.subarray(start, end) }
}

/** A file of `header` and `body` with the checksum they call for. */
export function joinSnapshot ({ header, body }: SnapshotParts): Buffer {
  const content = Buffer.concat([Buffer.from(JSON.stringify(header) + '\n'), body])
  return Buffer.concat([content, Buffer.from(JSON.stringify({ sha256: createHash('sha256').update(content).digest('hex') }) + '\n')])
}

/** `file` with its header changed by `edit`, checksum recomputed. */
export function withHeader (file: Buffer, edit: (header: Record<string, unknown>) => void): Buffer {
  const parts = splitSnapshot(file)
  edit(parts.header)
  return joinSnapshot(parts)
}
