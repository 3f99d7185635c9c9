# frozen_string_literal: true

require_relative "descriptor/rack"

module TenantProxy
  # The two Rack middlewares the Railtie inserts.
  module Middleware
    # Early in the stack (before Rails::Rack::Logger, so log tags can name the tenant): verifies
    # the descriptor with the lazily built verifier and refuses the request without a valid one
    # (400/401 JSON with the reason code, 503 when the key set is unreachable). Paths in
    # config.tenant_proxy.skip_paths (default /up) pass without one; so do requests for
    # config.tenant_proxy.passthrough_hosts (the proxy's routing.passthroughHosts, which it
    # forwards with no descriptor), which then run with no tenant.
    class Verify < Descriptor::Middleware
      def initialize(app, settings = TenantProxy.settings)
        @settings = settings
        super(app, verifier: -> { settings.verifier }, header: settings.header, skip_paths: [])
      end

      private

      def skip?(env)
        paths = @settings[:skip_paths] || []
        return true if paths.any? { |p| p.is_a?(Regexp) ? p.match?(env["PATH_INFO"].to_s) : p == env["PATH_INFO"] }

        passthrough = @settings[:passthrough_hosts] || []
        !passthrough.empty? && env[@env_header].nil? && passthrough.include?(Descriptor.canonical_host(@host.call(env)))
      end

      def log(env, error)
        @logger ||= defined?(::Rails) && ::Rails.respond_to?(:logger) ? ::Rails.logger : nil
        super
      end
    end

    # At the end of the stack (after the reloader, so the model classes it switches are the
    # current ones): runs the rest of the request against the verified descriptor's database.
    class Switch
      def initialize(app)
        @app = app
      end

      def call(env)
        descriptor = env[ENV_KEY]
        return @app.call(env) unless descriptor

        TenantProxy.with_descriptor(descriptor) { @app.call(env) }
      rescue StaleDescriptor => e
        # A request signed before the tenant's database moved: the next one carries the new epoch.
        body = JSON.generate({ error: "tenant database moved, retry", reason: "stale_epoch" })
        env["rack.logger"]&.info(e.message)
        [503, { "content-type" => "application/json", "retry-after" => "1", "cache-control" => "no-store",
                "content-length" => body.bytesize.to_s }, [body]]
      end
    end

    # config.log_tags entry: "tenant=<slug>" for a verified request, "tenant=-" otherwise.
    LOG_TAG = ->(request) { "tenant=#{request.env[ENV_KEY]&.tenant || '-'}" }
  end
end
