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
 * The heartbeat alone proves only that a session hears its own notifications, and PostgreSQL
 * delivers those at the end of the notifying transaction, while the client still holds the server
 * connection: through PgBouncer in transaction mode it arrives (test/pgbouncer.test.ts found
 * this), while the registry's notifications, sent by other sessions while the proxy's LISTEN
 * session sits unassigned in the pool, are lost. So the feed also watches the registry's own
 * notifications: a change the periodic check finds (the registry past the index) must be
 * announced by a notification before the next check; a check window where it is not is a miss too.
 *
 * DEAF_AFTER_MISSES checks in a row without the heartbeat, or changes unannounced in as many
 * windows in a row, make the feed deaf: reported (/ready,
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

/** Why a feed is deaf: its own heartbeat does not arrive, or the registry's changes are not announced. */
export type DeafReason = 'heartbeat' | 'changes'

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
  /** A registry version the periodic check found before any notification announced it. */
  #unannounced: number | null = null
  /** Check windows in a row with a change no notification announced. */
  #changeMisses = 0
  /** The highest version a registry notification announced. */
  #lastAnnounced = 0
  readonly #onChange: (deaf: boolean, misses: number, why: DeafReason) => void

  /** `onChange` is told when the feed turns deaf and when it hears notifications again. */
  constructor (schema: string, onChange: (deaf: boolean, misses: number, why: DeafReason) => void, token = randomBytes(6).toString('hex')) {
    this.channel = `${schema.slice(0, 40)}_heartbeat_${token}`.slice(0, 63)
    this.#onChange = onChange
  }

  get deaf (): boolean {
    return this.misses >= DEAF_AFTER_MISSES
  }

  /** Checks in a row whose heartbeat did not arrive, or whose changes no notification announced. */
  get misses (): number {
    return Math.max(this.#misses, this.#changeMisses)
  }

  /** A registry notification announcing `version` arrived on the feed: other sessions reach it. */
  announced (version: number): void {
    if (version > this.#lastAnnounced) this.#lastAnnounced = version
    if (this.#unannounced !== null && version >= this.#unannounced) this.#unannounced = null
    this.#heard(() => { this.#changeMisses = 0 })
  }

  /** The periodic check found the registry at `version`, past the index: a notification should follow. */
  unannounced (version: number): void {
    // Announced already, and still being applied when the check read the registry's version.
    if (version <= this.#lastAnnounced) return
    if (this.#unannounced === null || version > this.#unannounced) this.#unannounced = version
  }

  /** Applies `reset`; tells the listener when that ends a deaf episode. */
  #heard (reset: () => void): void {
    const wasDeaf = this.deaf
    reset()
    if (wasDeaf && !this.deaf) this.#onChange(false, 0, 'heartbeat')
  }

  /** A notification on the feed connection; true when it was this heartbeat's (and is handled). */
  receive (channel: string, payload: string | undefined): boolean {
    if (channel !== this.channel) return false
    const seq = Number(PAYLOAD.exec(payload ?? '')?.[1] ?? 0)
    if (seq > this.#received) this.#received = seq
    if (this.#received >= this.#sent) {
      this.#awaiting = false
      this.#heard(() => { this.#misses = 0 })
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
    const wasDeaf = this.deaf
    let missed = false
    if (this.#unannounced !== null) {
      // A change of the last window was never announced: judged once, then the next window's.
      this.#changeMisses++
      this.#unannounced = null
      missed = true
    }
    if (this.#awaiting) {
      this.#misses++
      missed = true
    }
    let reconnect = false
    if (missed) {
      const misses = this.misses
      if (!wasDeaf && this.deaf) this.#onChange(true, misses, this.#misses >= DEAF_AFTER_MISSES ? 'heartbeat' : 'changes')
      reconnect = this.deaf && (misses <= MAX_RECONNECT_EVERY ? (misses & (misses - 1)) === 0 : misses % MAX_RECONNECT_EVERY === 0)
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
