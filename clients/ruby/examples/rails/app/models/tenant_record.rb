# frozen_string_literal: true

# Base class of every model stored in the tenant's own database:
#
#   class Order < TenantRecord; end
#
# The default shard uses the database.yml entry "tenant" (adapter, username, password; see
# config/database.yml in this directory); TenantPools adds one shard per tenant database at run
# time, and TenantDatabase (the controller concern) switches to it for each request.
class TenantRecord < ApplicationRecord
  self.abstract_class = true

  connects_to shards: { default: { writing: :tenant } }
end
