# frozen_string_literal: true

# rails tenant_proxy:migrate | :rollback | :status — the app's tenant migrations
# (config.tenant_proxy.migrations_paths, db/tenant_migrate by default) on every tenant database
# the proxy's ops API lists, or on TENANTS=acme,globex only; CONCURRENCY=n at a time
# (config.tenant_proxy.migrate_concurrency, 4). Exits 1 when any tenant failed.
namespace :tenant_proxy do
  desc "Migrate every tenant database (TENANTS=a,b to choose, VERSION=, CONCURRENCY=)"
  task migrate: :environment do
    exit 1 unless TenantProxy::Migrator.run_task(:migrate)
  end

  desc "Roll back every tenant database STEP migrations (default 1; TENANTS=a,b to choose)"
  task rollback: :environment do
    exit 1 unless TenantProxy::Migrator.run_task(:rollback)
  end

  desc "Show each tenant database's schema version and pending migrations (TENANTS=a,b to choose)"
  task status: :environment do
    exit 1 unless TenantProxy::Migrator.run_task(:status)
  end
end
