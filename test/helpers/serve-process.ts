/**
 * Runs `tenant-proxy serve` from dist/ as a child process (the way it runs in production) and
 * learns its ports from its own "listening" log line.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { readFile } from 'node:fs/promises'
import type { Test } from 'tap'
import { CLI } from './cli.js'

const GC_PRELOAD = new URL('./gc-on-signal.mjs', import.meta.url).href

/** A running proxy process. */
export interface ServeProcess {
  child: ChildProcess
  trafficPort: number
  opsPort: number
  logs: string[]
  /** Resident set size and its peak so far (VmRSS, VmHWM), in bytes. */
  memory (): Promise<{ rss: number, peak: number }>
  /** Runs a full GC in the proxy (test preload); resolves to process.memoryUsage() after it. */
  collectGarbage (): Promise<NodeJS.MemoryUsage>
  stop (): Promise<number | null>
}

/** Spawns the proxy and resolves once it listens (or rejects with its output if it exits first); `nodeArgs` go before the script. */
export async function spawnServe (t: Test, env: Record<string, string>, opts: { nodeArgs?: readonly string[] } = {}): Promise<ServeProcess> {
  // The preload lets tests trigger a full GC; it changes nothing else in the process.
  const child = spawn(process.execPath, ['--expose-gc', `--import=${GC_PRELOAD}`, ...(opts.nodeArgs ?? []), CLI, 'serve'], {
    env: { PATH: process.env.PATH ?? '', TENANT_PROXY_TRAFFIC_HOST: '127.0.0.1', TENANT_PROXY_TRAFFIC_PORT: '0', TENANT_PROXY_OPS_HOST: '127.0.0.1', TENANT_PROXY_OPS_PORT: '0', TENANT_PROXY_SHUTDOWN_DRAIN_DELAY_MS: '0', TENANT_PROXY_REGISTRY_SNAPSHOT_PATH: '', ...env },
    stdio: ['ignore', 'pipe', 'pipe']
  })
  const logs: string[] = []
  let stderr = ''
  let gcWaiters: Array<(usage: NodeJS.MemoryUsage) => void> = []
  child.stderr?.on('data', (c: Buffer) => {
    const text = c.toString()
    const match = /tenant-proxy-test: gc done (\{.*\})/.exec(text)
    if (match !== null) {
      const usage = JSON.parse(match[1] ?? '{}') as NodeJS.MemoryUsage
      for (const fn of gcWaiters) fn(usage)
      gcWaiters = []
      return
    }
    stderr += text
  })
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)))
  t.teardown(async () => {
    if (child.exitCode === null) child.kill('SIGKILL')
    await exited
  })
  const ports = await new Promise<{ traffic: number, ops: number }>((resolve, reject) => {
    let buffered = ''
    child.stdout?.on('data', (c: Buffer) => {
      buffered += c.toString()
      let nl: number
      while ((nl = buffered.indexOf('\n')) !== -1) {
        const line = buffered.slice(0, nl)
        buffered = buffered.slice(nl + 1)
        logs.push(line)
        const entry = JSON.parse(line) as { msg?: string, traffic?: string, ops?: string }
        if (entry.msg === 'tenant-proxy listening') {
          resolve({ traffic: Number(entry.traffic?.split(':').pop()), ops: Number(entry.ops?.split(':').pop()) })
        }
      }
    })
    void exited.then((code) => reject(new Error(`tenant-proxy serve exited with ${String(code)} before listening: ${stderr}${logs.join('\n')}`)))
  })
  return {
    child,
    trafficPort: ports.traffic,
    opsPort: ports.ops,
    logs,
    async memory () {
      const status = await readFile(`/proc/${child.pid ?? 0}/status`, 'utf8')
      const kb = (field: string): number => Number(new RegExp(`${field}:\\s+(\\d+) kB`).exec(status)?.[1] ?? NaN) * 1024
      return { rss: kb('VmRSS'), peak: kb('VmHWM') }
    },
    async collectGarbage () {
      const done = new Promise<NodeJS.MemoryUsage>((resolve) => gcWaiters.push(resolve))
      child.kill('SIGUSR2')
      return await done
    },
    async stop () {
      child.kill('SIGTERM')
      return await exited
    }
  }
}
