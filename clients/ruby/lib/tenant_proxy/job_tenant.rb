# frozen_string_literal: true

module TenantProxy
  # Prepended to ActiveJob::Base by the Railtie: a job enqueued while a tenant is in effect
  # carries the tenant's slug in its payload, and performs inside TenantProxy.with_tenant(slug).
  #
  # The payload key, "tenant_proxy_tenant" with the slug as a string, is a stable interface: it
  # names the tenant (which never changes), not its database coordinates (which change when the
  # tenant moves) nor a descriptor (which expires within a minute), so a job enqueued by one
  # version of the app performs against the same tenant on the next, through a rolling deploy
  # and a database move alike. A job enqueued with no tenant (inside TenantProxy.global, or by
  # code with no tenant) has no such key and performs with no tenant: its tenant models raise.
  module JobTenant
    KEY = "tenant_proxy_tenant"

    def serialize
      data = super
      unless defined?(@tenant_proxy_captured) && @tenant_proxy_captured
        @tenant_proxy_tenant = TenantProxy.current_tenant
        @tenant_proxy_captured = true
      end
      data[KEY] = @tenant_proxy_tenant if @tenant_proxy_tenant
      data
    end

    def deserialize(job_data)
      super
      @tenant_proxy_tenant = job_data[KEY]
      @tenant_proxy_captured = true
      @tenant_proxy_deserialized = true
    end

    # The tenant the job was enqueued for (nil: none, or not enqueued yet).
    def tenant_proxy_tenant
      @tenant_proxy_tenant
    end

    def perform_now
      # Called directly (MyJob.perform_now), a job runs in whatever tenant its caller is in.
      return super unless defined?(@tenant_proxy_deserialized) && @tenant_proxy_deserialized

      slug = @tenant_proxy_tenant
      return TenantProxy.global { super } unless slug

      # Arguments (GlobalIDs of tenant records) are deserialized inside perform_now: the tenant
      # must be in effect before, not just around the perform callbacks.
      TenantProxy.with_tenant(slug) do
        logger.respond_to?(:tagged) ? logger.tagged("tenant=#{slug}") { super } : super
      end
    end
  end
end
