# frozen_string_literal: true

module TenantProxy
  # The namespace of Rails.cache (installed by the Railtie): every key of a tenant is written as
  # "tenant:<slug>:<key>", keys written inside TenantProxy.global as "global:<key>", and a cache
  # call with neither raises NoTenant instead of sharing an entry between tenants (multi-tenancy
  # gems that left the cache alone let tenants read each other's fragments). An app namespace
  # the store already had stays in front.
  #
  # Per call, `namespace:` still wins (Rails.cache.read(key, namespace: "x")): an explicit choice.
  class CacheNamespace
    attr_reader :inner

    def self.install(store)
      return if store.nil? || store.options[:namespace].is_a?(self)

      store.options[:namespace] = new(store.options[:namespace])
    end

    def initialize(inner)
      @inner = inner
    end

    def call
      base = @inner.respond_to?(:call) ? @inner.call : @inner
      frame = Context.current
      scope = if frame&.descriptor
                "tenant:#{frame.descriptor.tenant}"
              elsif frame&.global
                "global"
              else
                raise NoTenant, "tenant_proxy: Rails.cache was used with no tenant in effect; " \
                                "wrap shared entries in TenantProxy.global { } (keys are namespaced per tenant)"
              end
      base ? "#{base}:#{scope}" : scope
    end
  end
end
