# frozen_string_literal: true

# A switcher that only records (no database) and a resolver that answers any slug: enough to run
# code "inside a tenant" in unit tests.
module RecordingTenants
  Lease = Struct.new(:shard)
  Descriptor = Struct.new(:tenant, :epoch)

  class Switcher
    def checkout(d)
      Lease.new(:"shard_#{d.tenant}")
    end

    def activate(_lease)
      yield
    end

    def checkin(_lease, release:); end

    def deactivate
      yield
    end
  end

  class Resolver
    def descriptor_for(slug)
      Descriptor.new(slug, 1)
    end
  end

  def install_recording_tenants
    TenantProxy.switcher = Switcher.new
    TenantProxy.settings = TenantProxy::Settings.new({ resolver: Resolver.new }, env: {})
  end

  def remove_recording_tenants
    TenantProxy.switcher = nil
    TenantProxy.settings = nil
  end
end
