/**
 * Writing files that hold secrets or must never be seen half-written: created with their final
 * mode by the open itself (O_CREAT|O_EXCL: no moment with a wider mode, never through a symlink or
 * into an existing file), fsynced, and for replacements renamed over the old file.
 */
import { randomBytes } from 'node:crypto'
import { closeSync, fsyncSync, openSync, renameSync, unlinkSync, writeSync } from 'node:fs'
import { basename, dirname, join } from 'node:path'

/** Creates `path` (it must not exist) with `mode` and `text`; removes it again if writing fails. */
export function createExclusive (path: string, text: string, mode: number): void {
  const fd = openSync(path, 'wx', mode)
  try {
    writeSync(fd, text)
    fsyncSync(fd)
  } catch (err) {
    closeSync(fd)
    unlinkSync(path)
    throw err
  }
  closeSync(fd)
}

/**
 * Replaces `path` (or creates it) with `text` at `mode`: a temporary file beside it, then a rename,
 * so readers see the old or the new file, never half of one; the directory is fsynced so the
 * rename reaches the disk too.
 */
export function replaceAtomically (path: string, text: string, mode: number): void {
  const tmp = join(dirname(path), `.${basename(path)}.${randomBytes(6).toString('hex')}.tmp`)
  createExclusive(tmp, text, mode)
  renameSync(tmp, path)
  const dir = openSync(dirname(path), 'r')
  try {
    fsyncSync(dir)
  } finally {
    closeSync(dir)
  }
}
