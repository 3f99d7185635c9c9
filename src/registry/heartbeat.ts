/**
 * The change feed's heartbeat: proof that notifications reach the feed connection. Behind
 * PgBouncer in transaction mode LISTEN "works" and the connection stays up, but notifications
 * never arrive (the LISTEN ran on a server connection the client does not keep), and a proxy
 * would claim to be synced while changes come only with the periodic check (issue 12).
 *
 * At every periodic check the sync sends `NOTIFY <channel>, 'heartbeat <n>'` on the feed
 * connection and expects it back there before the next check. The channel is this process's own
 * (LISTENed in the same statement as the registry's channel, so on the same server session), not
 * the registry's: every proxy hears every notification of a channel, and a shared one would make
 * N proxies deliver N² heartbeats per interval, and make older proxies, which catch up on any
 * payload they cannot read as a version, query the change log for each. NOTIFY and LISTEN need
 * no privilege, so the read-only proxy role has the heartbeat too.
 *
 * DEAF_AFTER_MISSES checks in a row without the heartbeat make the feed deaf: reported (/ready,
 * tenant_proxy_registry_feed_deaf) until a heartbeat arrives. A deaf feed is reconnected at the
 * 2nd, 4th, 8th … miss, then every 64th (a pooler misconfiguration stays deaf however often it
 * reconnects, and a reconnect costs a resync).
 */
import { randomBytes } from 'node:crypto'

/** Consecutive checks without the heartbeat after which the feed counts as deaf. */
export const DEAF_AFTER_MISSES = 2
/** Reconnects of a deaf feed back off to one every this many misses. */
const MAX_RECONNECT_EVERY = 64
const PAYLOAD = /^heartbeat (\d{1,15})$/

/** What a check does about the heartbeat. */
export interface Beat {
  /** Send this on the heartbeat channel now (SELECT pg_notify(channel, payload)). */
  readonly payload: string
  /** The feed is deaf and due for a reconnect. */
  readonly reconnect: boolean
}

/** The heartbeat of one proxy's change feed, across its reconnections. */
export class FeedHeartbeat {
  /** This process's channel (at most 63 bytes, as PostgreSQL's identifiers). */
  readonly channel: string
  #sent = 0
  #received = 0
  /** A heartbeat was sent on the current connection and has not arrived yet. */
  #awaiting = false
  /**
   * A heartbeat is queued or being sent (its NOTIFY has not returned): a check that comes round
   * meanwhile (a slow registry, a busy process) judges nothing, or it would count a heartbeat
   * that was never sent as missed. PostgreSQL delivers a session's own notification before the
   * NOTIFY returns, so once it returned, a heartbeat that has not arrived is really lost.
   */
  #inFlight = false
  #misses = 0
  readonly #onChange: (deaf: boolean, misses: number) => void

  /** `onChange` is told when the feed turns deaf and when a heartbeat arrives again. */
  constructor (schema: string, onChange: (deaf: boolean, misses: number) => void, token = randomBytes(6).toString('hex')) {
    this.channel = `${schema.slice(0, 40)}_heartbeat_${token}`.slice(0, 63)
    this.#onChange = onChange
  }

  get deaf (): boolean {
    return this.#misses >= DEAF_AFTER_MISSES
  }

  /** Checks in a row whose heartbeat did not arrive. */
  get misses (): number {
    return this.#misses
  }

  /** A notification on the feed connection; true when it was this heartbeat's (and is handled). */
  receive (channel: string, payload: string | undefined): boolean {
    if (channel !== this.channel) return false
    const seq = Number(PAYLOAD.exec(payload ?? '')?.[1] ?? 0)
    if (seq > this.#received) this.#received = seq
    if (this.#received >= this.#sent) {
      this.#awaiting = false
      const wasDeaf = this.deaf
      this.#misses = 0
      if (wasDeaf) this.#onChange(false, 0)
    }
    return true
  }

  /** A new feed connection: what was sent on the previous one can no longer arrive. */
  connected (): void {
    this.#awaiting = false
    this.#inFlight = false
  }

  /** At each periodic check: judges the previous heartbeat and gives the next one (null: one is still being sent). */
  beat (): Beat | null {
    if (this.#inFlight) return null
    let reconnect = false
    if (this.#awaiting) {
      this.#misses++
      if (this.#misses === DEAF_AFTER_MISSES) this.#onChange(true, this.#misses)
      reconnect = this.deaf && (this.#misses <= MAX_RECONNECT_EVERY ? (this.#misses & (this.#misses - 1)) === 0 : this.#misses % MAX_RECONNECT_EVERY === 0)
    }
    this.#sent++
    this.#awaiting = false
    this.#inFlight = !reconnect
    return { payload: `heartbeat ${this.#sent}`, reconnect }
  }

  /** The NOTIFY of the last beat returned (ok) or failed; from now on its absence counts. */
  sent (ok: boolean): void {
    this.#inFlight = false
    this.#awaiting = ok && this.#received < this.#sent
  }
}
