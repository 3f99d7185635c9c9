import type { Migration } from './index.js'

/**
 * Database servers as registry objects (`tenant-proxy servers …`). A tenant may name a server;
 * its database host and port are then copied from the server's row by a trigger, so the proxy's
 * snapshot and change feed read tenants exactly as before (no join on the request path's loads,
 * no new entity in the change log). Changing a server's host or port rewrites every tenant row on
 * it in the same transaction: each is logged as a tenant change (one registry version, one NOTIFY)
 * and the epoch trigger of migration 001 bumps each tenant's epoch, so apps reconnect.
 *
 * Admin credentials are never stored: a server holds the name of an environment variable or the
 * path of a file, which the CLI process that needs the credentials resolves (src/servers/credentials.ts).
 */
export const servers: Migration = {
  version: 3,
  name: 'database servers',
  sql: (s) => `
CREATE TABLE ${s}.database_servers (
  name text PRIMARY KEY,
  host text NOT NULL,
  port integer NOT NULL,
  admin_url_env text NULL,
  admin_url_file text NULL,
  owner text NULL,
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now(),
  CONSTRAINT database_servers_name_format CHECK (name ~ '^[a-z0-9]([a-z0-9_-]{0,61}[a-z0-9])?$'),
  CONSTRAINT database_servers_host_format CHECK (host ~ '^[a-z0-9]([a-z0-9.:-]{0,251}[a-z0-9])?$'),
  CONSTRAINT database_servers_port_range CHECK (port BETWEEN 1 AND 65535),
  CONSTRAINT database_servers_admin_url_env_format CHECK (admin_url_env IS NULL OR admin_url_env ~ '^[A-Za-z_][A-Za-z0-9_]{0,127}$'),
  -- A path, never a URL: a pasted connection string would put a password in the registry.
  CONSTRAINT database_servers_admin_url_file_format CHECK (admin_url_file IS NULL OR (
    length(admin_url_file) BETWEEN 1 AND 4096 AND admin_url_file !~ '[[:cntrl:]]' AND position('://' in admin_url_file) = 0)),
  CONSTRAINT database_servers_one_admin_reference CHECK (admin_url_env IS NULL OR admin_url_file IS NULL),
  CONSTRAINT database_servers_owner_format CHECK (owner IS NULL OR owner ~ '^[a-z_][a-z0-9_]{0,62}$')
);

ALTER TABLE ${s}.tenants ADD COLUMN database_server text NULL
  CONSTRAINT tenants_database_server_fkey REFERENCES ${s}.database_servers (name) ON UPDATE CASCADE ON DELETE RESTRICT;
CREATE INDEX tenants_database_server_idx ON ${s}.tenants (database_server) WHERE database_server IS NOT NULL;

-- Named "resolve" so it fires before tenants_touch (BEFORE triggers fire in name order): the epoch
-- check there must see the host and port copied here.
CREATE FUNCTION ${s}.tenant_resolve_server() RETURNS trigger LANGUAGE plpgsql AS $fn$
DECLARE
  h text;
  p integer;
BEGIN
  IF NEW.database_server IS NOT NULL THEN
    -- FOR SHARE: a concurrent change of the server's host waits for this row's transaction, and
    -- its own tenant rewrite (a later statement) then sees this row; the other way round this
    -- read waits for that change and copies the new host. Either way no tenant keeps an old host.
    SELECT host, port INTO h, p FROM ${s}.database_servers WHERE name = NEW.database_server FOR SHARE;
    IF FOUND THEN
      NEW.database_host := h;
      NEW.database_port := p;
    END IF;
    -- Not found: the foreign key refuses the row.
  END IF;
  RETURN NEW;
END
$fn$;

CREATE TRIGGER tenants_resolve_server BEFORE INSERT OR UPDATE ON ${s}.tenants
  FOR EACH ROW EXECUTE FUNCTION ${s}.tenant_resolve_server();

CREATE FUNCTION ${s}.touch_database_server() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
  NEW.updated_at := now();
  RETURN NEW;
END
$fn$;

CREATE TRIGGER database_servers_touch BEFORE UPDATE ON ${s}.database_servers
  FOR EACH ROW EXECUTE FUNCTION ${s}.touch_database_server();

CREATE FUNCTION ${s}.database_server_moved() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
  UPDATE ${s}.tenants SET database_host = NEW.host, database_port = NEW.port WHERE database_server = NEW.name;
  RETURN NULL;
END
$fn$;

CREATE TRIGGER database_servers_moved AFTER UPDATE OF host, port ON ${s}.database_servers
  FOR EACH ROW WHEN ((OLD.host, OLD.port) IS DISTINCT FROM (NEW.host, NEW.port))
  EXECUTE FUNCTION ${s}.database_server_moved();
`
}
