# frozen_string_literal: true

module TenantProxy
  # Turns a tenant slug into a verified descriptor for code outside a request (console, rake,
  # jobs, Action Cable after its upgrade descriptor expired): asks the proxy's ops API, verifies
  # the answer like a request descriptor (signature, iss, aud, typ, time, and host = the
  # tenant's primary domain the API names), and keeps it until `margin` seconds before it
  # expires. The state the API reports ("active", "suspended", "maintenance") comes with it:
  # migrations must reach tenants in maintenance, so no state is refused here.
  class Resolver
    Entry = Struct.new(:descriptor, :state, :fresh_until)

    # client: an OpsClient. verifier: a Descriptor::Verifier or a callable returning one.
    def initialize(client:, verifier:, margin: 10, clock: -> { Time.now.to_f })
      @client = client
      @verifier = verifier
      @margin = margin
      @clock = clock
      @cache = {}
      @mutex = Mutex.new
    end

    def descriptor_for(slug)
      lookup(slug).descriptor
    end

    # The tenant's state as the proxy reported it with the descriptor.
    def state_of(slug)
      lookup(slug).state
    end

    # Every tenant ({"slug","state","host"}), from the ops API's paged list.
    def each_tenant(state: nil, &block)
      @client.each_tenant(state: state, &block)
    end

    def clear
      @mutex.synchronize { @cache.clear }
    end

    private

    def lookup(slug)
      slug = slug.to_s
      now = @clock.call
      cached = @mutex.synchronize { @cache[slug] }
      return cached if cached && now < cached.fresh_until

      answer = @client.descriptor(slug)
      verifier = @verifier.respond_to?(:call) ? @verifier.call : @verifier
      begin
        d = verifier.verify(answer["descriptor"], request_host: answer["host"])
      rescue Descriptor::Error => e
        raise OpsApiInvalidAnswer, "tenant_proxy: the ops API's descriptor for #{slug} fails verification (#{e.reason}); " \
                                   "check TENANT_DESCRIPTOR_ISSUER, TENANT_DESCRIPTOR_AUDIENCE and the key settings"
      end
      raise OpsApiInvalidAnswer, "tenant_proxy: asked the ops API for #{slug}, got a descriptor for #{d.tenant}" unless d.tenant == slug

      entry = Entry.new(d, answer["state"], d.expires_at - @margin)
      @mutex.synchronize { @cache[slug] = entry }
      entry
    end
  end
end
