# frozen_string_literal: true

require_relative "tenant_proxy/version"
require_relative "tenant_proxy/errors"
require_relative "tenant_proxy/descriptor"
require_relative "tenant_proxy/settings"
require_relative "tenant_proxy/context"
require_relative "tenant_proxy/ops_client"
require_relative "tenant_proxy/resolver"

# The app side of tenant-proxy: verify the signed tenant descriptor the proxy adds to every
# request, and (in Rails, through TenantProxy::Railtie) run each request, job, console block and
# Action Cable connection against its own tenant's database, cache namespace and storage keys.
#
#   TenantProxy.with_tenant("acme") { Note.count }   # console, rake, jobs
#   TenantProxy.current_tenant                        # => "acme" inside, nil outside
#   TenantProxy.global { Rails.cache.fetch("plans") { ... } } # explicitly shared, no tenant
module TenantProxy
  ENV_KEY = "tenant_proxy.descriptor"

  class << self
    # Settings read on first use (config.tenant_proxy.* or TENANT_DESCRIPTOR_*).
    def settings
      @settings ||= Settings.new
    end

    attr_writer :settings

    # How a descriptor becomes a database connection for a block: the Railtie installs the
    # Active Record one. Without one, blocks only set the current tenant.
    attr_accessor :switcher

    def verifier
      settings.verifier
    end

    def resolver
      settings.resolver
    end

    # The verified descriptor in effect, or nil.
    def current_descriptor
      Context.current&.descriptor
    end

    # The slug of the tenant in effect, or nil.
    def current_tenant
      current_descriptor&.tenant
    end

    # The slug of the tenant in effect; raises NoTenant when there is none.
    def current_tenant!
      current_tenant || raise(NoTenant, "tenant_proxy: no tenant in effect (no verified descriptor for this request, " \
                                        "no TenantProxy.with_tenant block around this code)")
    end

    # True inside TenantProxy.global (and no tenant block within it).
    def global?
      frame = Context.current
      !frame.nil? && frame.global
    end

    # Runs the block against tenant slug's database. Outside a request the coordinates come from
    # the proxy's ops API (TENANT_DESCRIPTOR_API_URL and _TOKEN); inside a block for the same
    # tenant, the descriptor in effect is used as it is.
    def with_tenant(slug, &block)
      raise ArgumentError, "with_tenant needs a block" unless block

      slug = slug.to_s
      current = current_descriptor
      return yield if current && current.tenant == slug && !global?

      with_descriptor(resolver.descriptor_for(slug), &block)
    end

    # Runs the block against the database a verified descriptor names (what the Rails middleware
    # does for each request).
    def with_descriptor(descriptor)
      sw = switcher
      return Context.with(Context::Frame.new(descriptor, false, nil)) { yield } unless sw

      held = Context.stack.map(&:lease).compact
      lease = sw.checkout(descriptor)
      begin
        sw.activate(lease) { Context.with(Context::Frame.new(descriptor, false, lease)) { yield } }
      ensure
        # The connection goes back to its pool now, unless an enclosing block uses the same pool
        # (it may hold a transaction on it).
        sw.checkin(lease, release: held.none? { |h| h.shard == lease.shard })
      end
    end

    # Runs the block with no tenant, explicitly: shared cache entries, storage keys and broadcasts
    # are allowed, tenant models raise NoTenant.
    def global(&block)
      sw = switcher
      run = -> { Context.with(Context::Frame.new(nil, true, nil), &block) }
      sw ? sw.deactivate(&run) : run.call
    end

    # Every tenant the proxy knows ({"slug","state","host"}), from the ops API.
    def each_tenant(state: nil, &block)
      resolver.each_tenant(state: state, &block)
    end
  end
end

require_relative "tenant_proxy/railtie" if defined?(Rails::Railtie)
