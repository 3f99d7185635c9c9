/**
 * Upstream reachability for /ready: a TCP connect to each origin with a deadline. It says
 * whether the app listens, not whether it is healthy; the app's own health check says that.
 */
import { connect } from 'node:net'

/** Result for one origin. */
export interface OriginProbe {
  origin: string
  reachable: boolean
  ms: number
  error?: string
}

/** Probes every origin concurrently; never rejects. */
export async function probeOrigins (origins: readonly string[], timeoutMs: number): Promise<OriginProbe[]> {
  return await Promise.all(origins.map(async (origin) => await probe(origin, timeoutMs)))
}

async function probe (origin: string, timeoutMs: number): Promise<OriginProbe> {
  const url = new URL(origin)
  const port = Number(url.port === '' ? (url.protocol === 'https:' ? 443 : 80) : url.port)
  const host = url.hostname.replace(/^\[|\]$/g, '')
  const start = performance.now()
  return await new Promise<OriginProbe>((resolve) => {
    const socket = connect({ host, port })
    const done = (error?: string): void => {
      socket.destroy()
      const ms = Math.round((performance.now() - start) * 10) / 10
      resolve(error === undefined ? { origin, reachable: true, ms } : { origin, reachable: false, ms, error })
    }
    socket.setTimeout(timeoutMs, () => done('timeout'))
    socket.once('connect', () => done())
    socket.once('error', (err: NodeJS.ErrnoException) => done(err.code ?? err.message))
  })
}
