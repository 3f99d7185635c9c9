# frozen_string_literal: true

# Base class of the models stored in each tenant's own database:
#
#   class Note < TenantRecord; end
#
# Their table lives in every tenant database (migrations in db/tenant_migrate, run with
# `bin/rails tenant_proxy:migrate`). Outside a request, reach them inside
# TenantProxy.with_tenant("acme") { ... }; with no tenant they raise TenantProxy::NoTenant.
class TenantRecord < ApplicationRecord
  self.abstract_class = true
  include TenantProxy::TenantModel
end
