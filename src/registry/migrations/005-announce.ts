import type { Migration } from './index.js'

/**
 * Changes announced with their rows. Until now a registry transaction notified its version and
 * every proxy then read the change log back (one statement per proxy per change): with N proxies
 * a change cost the registry N reads, and each proxy two more wake-ups before the change was
 * visible. Now the notification carries the change whenever it is small: at commit, a deferred
 * constraint trigger on the registry_state row (which every registry transaction updates exactly
 * once, taking its version) reads the version's change rows and the current rows they name, the
 * same rows a proxy's delta read (src/registry/store.ts) would return, and notifies them as JSON
 * (format in src/registry/announcement.ts). A proxy at the version before applies it without a
 * query; any other proxy reads the change log as before. Transactions with more than
 * ANNOUNCE_MAX_CHANGES change rows, or a payload over PostgreSQL's 8,000 bytes, notify the version
 * alone, as before; so does any error while building the payload (a commit never fails for it).
 *
 * Why the rows read at commit are the registry at that version: writers take registry_state's row
 * lock with their first change and hold it to commit, so no other registry transaction commits
 * between this one's first change and its commit; and deferred triggers run after the last
 * statement. A writer that fires deferred triggers early (SET CONSTRAINTS ALL IMMEDIATE) and
 * writes on would announce a partial version, so a change after the announcement starts a new
 * version (record_change below); fired inside the write that took the version (constraints
 * immediate from the start) the payload is not built at all: the version alone is notified, and
 * the transaction keeps its one version.
 *
 * Any role that can connect to the registry database can LISTEN on its channels (PostgreSQL checks
 * no privilege for LISTEN): announcements show it slugs, domains and database names and hosts,
 * never credentials. docs/operations.md says to keep CONNECT on the registry database to the
 * proxy's and the operators' roles.
 */
export const ANNOUNCE_MAX_CHANGES = 50

export const announce: Migration = {
  version: 5,
  name: 'changes announced with their rows',
  sql: (s, channel) => `
CREATE OR REPLACE FUNCTION ${s}.record_change() RETURNS trigger LANGUAGE plpgsql AS $fn$
DECLARE
  v bigint := nullif(current_setting('tenant_proxy_txn.' || TG_TABLE_SCHEMA, true), '')::bigint;
  k text;
  t bigint;
BEGIN
  -- A version is announced once (at commit, by announce_version): a change after an early
  -- announcement (SET CONSTRAINTS ALL IMMEDIATE) is a new version, announced again at commit.
  IF v IS NULL OR v::text = current_setting('tenant_proxy_announced.' || TG_TABLE_SCHEMA, true) THEN
    UPDATE ${s}.registry_state SET version = version + 1 RETURNING version INTO v;
    PERFORM set_config('tenant_proxy_txn.' || TG_TABLE_SCHEMA, v::text, true);
  END IF;
  IF TG_TABLE_NAME = 'tenants' THEN
    k := CASE WHEN TG_OP = 'DELETE' THEN OLD.slug ELSE NEW.slug END;
    t := CASE WHEN TG_OP = 'DELETE' THEN OLD.id ELSE NEW.id END;
    INSERT INTO ${s}.changes (version, entity, op, key, tenant_id) VALUES (v, 'tenant', lower(TG_OP), k, t);
    IF TG_OP = 'UPDATE' AND NEW.slug <> OLD.slug THEN
      INSERT INTO ${s}.changes (version, entity, op, key, tenant_id) VALUES (v, 'tenant', 'delete', OLD.slug, t);
    END IF;
  ELSE
    k := CASE WHEN TG_OP = 'DELETE' THEN OLD.hostname ELSE NEW.hostname END;
    t := CASE WHEN TG_OP = 'DELETE' THEN OLD.tenant_id ELSE NEW.tenant_id END;
    INSERT INTO ${s}.changes (version, entity, op, key, tenant_id) VALUES (v, 'domain', lower(TG_OP), k, t);
    IF TG_OP = 'UPDATE' AND NEW.hostname <> OLD.hostname THEN
      INSERT INTO ${s}.changes (version, entity, op, key, tenant_id) VALUES (v, 'domain', 'delete', OLD.hostname, t);
    END IF;
  END IF;
  RETURN NULL;
END
$fn$;

CREATE FUNCTION ${s}.announce_version() RETURNS trigger LANGUAGE plpgsql AS $fn$
DECLARE
  payload text;
BEGIN
  -- At depth 1 the trigger runs at commit or at a SET CONSTRAINTS statement, after whole
  -- statements; deeper, it was fired inside the write that took the version (constraints immediate
  -- from the start): no rows yet, so the version alone, and the transaction keeps its one version.
  IF pg_trigger_depth() = 1 THEN
    PERFORM set_config('tenant_proxy_announced.' || TG_TABLE_SCHEMA, NEW.version::text, true);
    BEGIN
      WITH c AS (SELECT entity, key, tenant_id FROM ${s}.changes WHERE version = NEW.version LIMIT ${ANNOUNCE_MAX_CHANGES + 1}),
        k AS (SELECT count(*)::int AS n,
                array_agg(DISTINCT tenant_id) FILTER (WHERE tenant_id IS NOT NULL) AS ids,
                array_agg(DISTINCT key) FILTER (WHERE entity <> 'domain') AS slugs,
                array_agg(DISTINCT key) FILTER (WHERE entity = 'domain') AS hosts
              FROM c)
      SELECT json_build_array(1, NEW.version, NEW.registry_id, k.n, to_json(k.slugs), to_json(k.hosts),
          (SELECT json_agg(json_build_array(t.id, t.slug, t.database_name, t.database_host, t.database_port, t.state, t.upstream, t.epoch, p.hostname, t.paused_hold_ms))
             FROM ${s}.tenants t LEFT JOIN ${s}.domains p ON p.tenant_id = t.id AND p.kind = 'primary'
             WHERE t.id = ANY(k.ids)),
          (SELECT json_agg(json_build_array(d.hostname, t.slug)) FROM ${s}.domains d JOIN ${s}.tenants t ON t.id = d.tenant_id
             WHERE d.tenant_id = ANY(k.ids) OR d.hostname = ANY(k.hosts)))::text
        INTO payload FROM k WHERE k.n <= ${ANNOUNCE_MAX_CHANGES};
    EXCEPTION WHEN OTHERS THEN
      payload := NULL;
    END;
  END IF;
  PERFORM pg_notify('${channel}', CASE WHEN octet_length(payload) < 8000 THEN payload ELSE NEW.version::text END);
  RETURN NULL;
END
$fn$;

CREATE CONSTRAINT TRIGGER registry_state_announce AFTER UPDATE ON ${s}.registry_state
  DEFERRABLE INITIALLY DEFERRED FOR EACH ROW WHEN (NEW.version <> OLD.version)
  EXECUTE FUNCTION ${s}.announce_version();
`
}
