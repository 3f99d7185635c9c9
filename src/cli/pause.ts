/**
 * `tenant-proxy tenants pause` and `tenant-proxy tenants resume`: every proxy holds a tenant's new
 * requests (kamal-proxy's pause/resume, per tenant) until it is resumed, for a cut-over such as
 * `tenants move` or an operator's own maintenance that must not fail requests.
 */
import { tpError } from '../errors.js'
import { checkSlug } from '../registry/names.js'
import type { Written, TenantRecord } from '../registry/store.js'
import { flag, str, type Command, type CommandContext, type ParsedArgs } from './command.js'
import { settleWait, WAIT_HELP, WAIT_OPTIONS, WAIT_USAGE, waitAfterWrite, waitTimeoutMs } from './wait.js'

/** Default hold time of a pause (kamal-proxy's default drain timeout is 30 s too). */
export const DEFAULT_HOLD_MS = 30_000
/** The registry's bound on a pause's hold time (migration 004). */
const MAX_HOLD_MS = 3_600_000

/** A duration as `--timeout` takes it: 30s, 500ms, 2m, or a bare number of seconds; ms. */
export function parseHoldTimeout (raw: string, option = '--timeout'): number {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m)?$/.exec(raw.trim())
  const unit = m?.[2] ?? 's'
  const ms = m === null ? NaN : Math.round(Number(m[1]) * (unit === 'ms' ? 1 : unit === 's' ? 1_000 : 60_000))
  if (!(ms >= 1 && ms <= MAX_HOLD_MS)) {
    throw tpError('TENANT_PROXY_ERR_CLI_USAGE', [`${option} must be a duration from 1ms to 60m such as 30s, 500ms or 2m, got ${JSON.stringify(raw)}`])
  }
  return ms
}

/** A hold time as people read it. */
export function formatHold (ms: number): string {
  if (ms % 60_000 === 0) return `${ms / 60_000}m`
  if (ms % 1_000 === 0) return `${ms / 1_000}s`
  return `${ms}ms`
}

export const tenantsPause: Command = {
  name: 'tenants pause',
  summary: 'Hold a tenant\'s new requests in every proxy (not refuse them) until tenants resume.',
  usage: `tenant-proxy tenants pause <slug> [--timeout <duration>] [--json] ${WAIT_USAGE}`,
  help: `Every proxy holds the tenant's new requests until tenant-proxy tenants resume (or another
change of the tenant that ends the pause, such as the switch of tenants move); requests already
forwarded finish normally. A request held longer than --timeout (default ${formatHold(DEFAULT_HOLD_MS)}; 30s,
500ms, 2m; at most 60m) is answered 503 + Retry-After (TENANT_PROXY_ERR_TENANT_PAUSED), as is
one over the proxy's caps (routing.pause.maxHeldPerTenant, routing.pause.maxHeld). Only an
active tenant can be paused. Pausing a paused tenant sets its new timeout.
WebSocket upgrades are not held: a paused tenant's upgrade is answered 503 + Retry-After.

${WAIT_HELP}`,
  options: { timeout: { type: 'string' }, json: { type: 'boolean' }, ...WAIT_OPTIONS },
  positionals: [1, 1],
  async run (ctx, args) {
    const slug = checkSlug(args.positionals[0] ?? '')
    const timeout = str(args, 'timeout')
    const holdMs = timeout === undefined ? DEFAULT_HOLD_MS : parseHoldTimeout(timeout)
    const wait = waitTimeoutMs(args)
    const written = await (await ctx.registry()).store.setPause(slug, holdMs)
    await report(ctx, args, wait, written, `tenant ${slug} is paused: proxies hold its requests up to ${formatHold(holdMs)} each until tenant-proxy tenants resume ${slug}`)
    return 0
  }
}

export const tenantsResume: Command = {
  name: 'tenants resume',
  summary: 'End a tenant\'s pause: held requests are forwarded, new ones too.',
  usage: `tenant-proxy tenants resume <slug> [--json] ${WAIT_USAGE}`,
  help: `Every proxy forwards the requests it holds for the tenant, and routes new ones again.
Resuming a tenant that is not paused changes nothing.

${WAIT_HELP}`,
  options: { json: { type: 'boolean' }, ...WAIT_OPTIONS },
  positionals: [1, 1],
  async run (ctx, args) {
    const slug = checkSlug(args.positionals[0] ?? '')
    const wait = waitTimeoutMs(args)
    const store = (await ctx.registry()).store
    const before = await store.findTenant(slug)
    if (before === null || before.slug !== slug) throw tpError('TENANT_PROXY_ERR_TENANT_NOT_FOUND', [slug])
    const written = await store.setPause(slug, null)
    await report(ctx, args, wait, written, before.paused_hold_ms === null ? `tenant ${slug} was not paused; nothing changed` : `tenant ${slug} is resumed: held requests are forwarded`)
    return 0
  }
}

async function report (ctx: CommandContext, args: ParsedArgs, waitMs: number | null, written: Written<TenantRecord>, summary: string): Promise<void> {
  const json = flag(args, 'json')
  if (!json) ctx.io.out(summary + '\n')
  const wait = await waitAfterWrite(ctx, waitMs, written.version)
  if (json) ctx.io.out(JSON.stringify(wait === null ? written.result : { ...written.result, wait }, null, 2) + '\n')
  settleWait(ctx, wait)
}
