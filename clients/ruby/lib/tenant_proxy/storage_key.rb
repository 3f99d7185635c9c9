# frozen_string_literal: true

module TenantProxy
  # Prepended to ActiveStorage::Blob's class methods by the Railtie: blob keys (the names of the
  # stored files, and of their variants, which embed them) start with "<slug>/" of the tenant in
  # effect, so two tenants' files never share a name or a prefix; inside TenantProxy.global keys
  # have no prefix, and with neither, creating a blob raises NoTenant.
  module StorageKey
    def generate_unique_secure_token(**options)
      token = super
      frame = Context.current
      return "#{frame.descriptor.tenant}/#{token}" if frame&.descriptor
      return token if frame&.global

      raise NoTenant, "tenant_proxy: an Active Storage blob was created with no tenant in effect; " \
                      "create it inside TenantProxy.with_tenant(slug) { } (or TenantProxy.global { } for a shared file)"
    end
  end
end
