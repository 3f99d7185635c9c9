import type { Migration } from './index.js'

/**
 * Tenants, domains and the change log. Versions are handed out by updating the single row of
 * registry_state: the row lock is held until commit, so a later version always commits after an
 * earlier one and a reader that has seen version N has seen every change up to N (a sequence alone
 * would let version 6 commit before 5 and a proxy skip 5 for good). One version per transaction,
 * so a proxy applies a write whole (a domain moved between tenants never shows half-moved).
 */
export const initial: Migration = {
  version: 1,
  name: 'initial',
  sql: (s, channel) => `
CREATE TABLE ${s}.tenants (
  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  slug text NOT NULL,
  database_name text NOT NULL,
  database_host text NULL,
  database_port integer NULL,
  state text NOT NULL DEFAULT 'active',
  upstream text NULL,
  epoch bigint NOT NULL DEFAULT 1,
  settings jsonb NOT NULL DEFAULT '{}'::jsonb,
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now(),
  CONSTRAINT tenants_slug_key UNIQUE (slug),
  CONSTRAINT tenants_slug_format CHECK (slug ~ '^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$'),
  CONSTRAINT tenants_database_name_format CHECK (database_name ~ '^[a-z_][a-z0-9_]{0,62}$'),
  CONSTRAINT tenants_database_host_format CHECK (database_host IS NULL OR database_host ~ '^[a-z0-9]([a-z0-9.:-]{0,251}[a-z0-9])?$'),
  CONSTRAINT tenants_database_port_range CHECK (database_port IS NULL OR database_port BETWEEN 1 AND 65535),
  CONSTRAINT tenants_state_value CHECK (state IN ('active', 'suspended', 'maintenance')),
  CONSTRAINT tenants_upstream_format CHECK (upstream IS NULL OR upstream ~ '^[a-z0-9][a-z0-9_-]{0,62}$'),
  CONSTRAINT tenants_epoch_positive CHECK (epoch >= 1),
  CONSTRAINT tenants_settings_object CHECK (jsonb_typeof(settings) = 'object')
);

-- Two tenants must never share a database; NULL host/port mean the configured default server.
CREATE UNIQUE INDEX tenants_database_location_key
  ON ${s}.tenants (coalesce(database_host, ''), coalesce(database_port, 0), database_name);

CREATE TABLE ${s}.domains (
  hostname text PRIMARY KEY,
  tenant_id bigint NOT NULL REFERENCES ${s}.tenants (id) ON DELETE CASCADE,
  kind text NOT NULL DEFAULT 'alias',
  created_at timestamptz NOT NULL DEFAULT now(),
  -- Canonical form only (see src/routing/host.ts): lower-case ASCII labels, no trailing dot.
  CONSTRAINT domains_hostname_format CHECK (
    length(hostname) <= 253
    AND hostname ~ '^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$'
  ),
  CONSTRAINT domains_kind_value CHECK (kind IN ('primary', 'alias'))
);
CREATE INDEX domains_tenant_id_idx ON ${s}.domains (tenant_id);
CREATE UNIQUE INDEX domains_one_primary_key ON ${s}.domains (tenant_id) WHERE kind = 'primary';

CREATE TABLE ${s}.registry_state (
  singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
  version bigint NOT NULL DEFAULT 0
);
INSERT INTO ${s}.registry_state DEFAULT VALUES;

CREATE TABLE ${s}.changes (
  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  version bigint NOT NULL,
  entity text NOT NULL CHECK (entity IN ('tenant', 'domain')),
  op text NOT NULL CHECK (op IN ('insert', 'update', 'delete')),
  key text NOT NULL,
  tenant_id bigint NULL,
  changed_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX changes_version_idx ON ${s}.changes (version);

CREATE FUNCTION ${s}.touch_tenant() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
  NEW.updated_at := now();
  -- A moved database is a new place: apps that cache connections by epoch reconnect.
  IF (NEW.database_name, NEW.database_host, NEW.database_port) IS DISTINCT FROM
     (OLD.database_name, OLD.database_host, OLD.database_port)
     AND NEW.epoch = OLD.epoch THEN
    NEW.epoch := OLD.epoch + 1;
  END IF;
  RETURN NEW;
END
$fn$;

CREATE TRIGGER tenants_touch BEFORE UPDATE ON ${s}.tenants
  FOR EACH ROW EXECUTE FUNCTION ${s}.touch_tenant();

CREATE FUNCTION ${s}.record_change() RETURNS trigger LANGUAGE plpgsql AS $fn$
DECLARE
  v bigint := nullif(current_setting('tenant_proxy_txn.' || TG_TABLE_SCHEMA, true), '')::bigint;
  k text;
  t bigint;
BEGIN
  IF v IS NULL THEN
    UPDATE ${s}.registry_state SET version = version + 1 RETURNING version INTO v;
    PERFORM set_config('tenant_proxy_txn.' || TG_TABLE_SCHEMA, v::text, true);
    -- Delivered at commit, once per transaction; listeners then read changes > their version.
    PERFORM pg_notify('${channel}', v::text);
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

CREATE TRIGGER tenants_record_change AFTER INSERT OR UPDATE OR DELETE ON ${s}.tenants
  FOR EACH ROW EXECUTE FUNCTION ${s}.record_change();
CREATE TRIGGER domains_record_change AFTER INSERT OR UPDATE OR DELETE ON ${s}.domains
  FOR EACH ROW EXECUTE FUNCTION ${s}.record_change();
`
}
