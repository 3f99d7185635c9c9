# frozen_string_literal: true

module TenantProxy
  # Include in the abstract base class of the models stored in each tenant's own database
  # (`rails generate tenant_proxy:install` writes app/models/tenant_record.rb):
  #
  #   class TenantRecord < ApplicationRecord
  #     self.abstract_class = true
  #     include TenantProxy::TenantModel
  #   end
  #
  # Its models then use the database of the tenant in effect and raise NoTenant when there is
  # none. Only the class name is remembered, so reloading the class in development is safe.
  module TenantModel
    NAMES = []
    LOCK = Mutex.new

    def self.included(klass)
      ActiveRecordAdapter.tenant_class!(klass)
      LOCK.synchronize { NAMES << klass.name unless NAMES.include?(klass.name) }
    end

    # Names of every class that included this module so far.
    def self.names
      LOCK.synchronize { NAMES.dup }
    end
  end
end
