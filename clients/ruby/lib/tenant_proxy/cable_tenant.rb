# frozen_string_literal: true

module TenantProxy
  # Action Cable: every unit of work of a connection (connect, subscribe, perform, stream
  # callbacks, disconnect) runs for the tenant of the connection's upgrade request, and stream
  # names are namespaced per tenant ("tenant:<slug>:<name>"), so tenant A can neither subscribe
  # to nor receive tenant B's broadcasts of the same name, whatever name a client asks for.
  module CableTenant
    module_function

    # Around-callback of ActionCable::Server::Worker#work (the Railtie adds it inside the
    # executor wrap Action Cable's engine sets up).
    def around_work(worker, inner)
      connection = worker.connection
      env = connection.respond_to?(:env) ? connection.env : nil
      descriptor = env && env[ENV_KEY]
      return TenantProxy.global { inner.call } unless descriptor

      # The upgrade's descriptor names the database while it is valid and current; a connection
      # lives longer (and the tenant may move meanwhile), so after that the tenant bound at the
      # upgrade gets fresh coordinates from the ops API.
      switcher = TenantProxy.switcher
      stale = switcher.respond_to?(:stale?) && switcher.stale?(descriptor)
      if Time.now.to_f < descriptor.expires_at && !stale
        TenantProxy.with_descriptor(descriptor) { inner.call }
      else
        TenantProxy.with_tenant(descriptor.tenant) { inner.call }
      end
    end

    # Prefix of a stream name for the scope in effect.
    def stream_prefix
      frame = Context.current
      return "tenant:#{frame.descriptor.tenant}:" if frame&.descriptor
      return "" if frame&.global

      raise NoTenant, "tenant_proxy: an Action Cable stream was used with no tenant in effect; " \
                      "broadcast inside TenantProxy.with_tenant(slug) { } (or TenantProxy.global { } for a shared stream)"
    end

    # Prepended to ActionCable::Server::Base: ActionCable.server.broadcast (and every broadcast
    # helper, which all go through broadcaster_for) names the stream of the tenant in effect.
    module Server
      def broadcaster_for(broadcasting, **options)
        super("#{CableTenant.stream_prefix}#{broadcasting}", **options)
      end
    end

    # Prepended to ActionCable::Channel::Base: stream_from and stream_for subscribe to the stream
    # of the connection's tenant. The prefix is computed here, in the worker where the tenant is
    # in effect: Action Cable subscribes later on its event loop thread, which has no tenant.
    module Channel
      def stream_from(broadcasting, *args, **options, &block)
        super("#{CableTenant.stream_prefix}#{broadcasting}", *args, **options, &block)
      end

      def stop_stream_from(broadcasting)
        super("#{CableTenant.stream_prefix}#{broadcasting}")
      end
    end

    # Prepended to ActionCable::Connection::Base: the connection's internal channel (what
    # ActionCable.server.remote_connections.where(...).disconnect broadcasts to) is its tenant's,
    # so disconnecting "user 1" in one tenant leaves another tenant's user 1 connected. Read from
    # the upgrade request, not the context: Action Cable evaluates it on its event loop thread.
    module Connection
      private

      def internal_channel
        name = super
        descriptor = env[ENV_KEY]
        name && descriptor ? "tenant:#{descriptor.tenant}:#{name}" : name
      end
    end
  end
end
