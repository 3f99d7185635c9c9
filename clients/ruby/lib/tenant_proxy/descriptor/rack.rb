# frozen_string_literal: true

require "json"
require "set"
require_relative "../descriptor"

module TenantProxy
  module Descriptor
    # Rack middleware: verifies X-Tenant-Descriptor on every request, answers 400 (missing,
    # duplicated, oversized or malformed) or 401 (any other failure) with a JSON body carrying the
    # reason code, 503 when the key set cannot be fetched, and puts the verified descriptor in
    # env["tenant_proxy.descriptor"].
    #
    #   use TenantProxy::Descriptor::Middleware, verifier: verifier, skip_paths: ["/up"]
    #
    # The host the descriptor's host claim is compared with is the X-Forwarded-Host header the
    # proxy sets (to the host it chose the tenant for, after dropping any a client sent), or Host
    # when there is none: exactly the header the proxy signed for. Never what a framework derives:
    # Rack 3 (Rails 7.1+) prefers a Forwarded header, which another hop may have written.
    # host: ->(env) { ... } replaces this choice.
    #
    # verifier: a Verifier, or anything answering #call returning one (read on each request, so
    # it can be built lazily).
    class Middleware
      ENV_KEY = "tenant_proxy.descriptor"
      MESSAGES = {
        400 => "tenant descriptor missing or malformed",
        401 => "tenant descriptor rejected",
        503 => "tenant descriptor keys unavailable"
      }.freeze
      PROXY_HOST = ->(env) { env["HTTP_X_FORWARDED_HOST"] || env["HTTP_HOST"] }

      def initialize(app, verifier:, header: "X-Tenant-Descriptor", skip_paths: ["/up"], host: PROXY_HOST, logger: nil)
        @app = app
        @verifier = verifier
        @env_header = "HTTP_#{header.upcase.tr('-', '_')}"
        @skip_paths = skip_paths.to_set
        @host = host
        @logger = logger
      end

      def call(env)
        return @app.call(env) if skip?(env)

        begin
          verifier = @verifier.respond_to?(:verify) ? @verifier : @verifier.call
          env[ENV_KEY] = verifier.verify(env[@env_header], request_host: @host.call(env))
        rescue Error => e
          return refuse(env, e)
        end
        @app.call(env)
      end

      private

      def skip?(env)
        @skip_paths.include?(env["PATH_INFO"])
      end

      def refuse(env, error)
        # The reason code only: never the token, never key material.
        log(env, error)
        body = JSON.generate({ error: MESSAGES.fetch(error.status), reason: error.reason })
        [error.status, { "content-type" => "application/json", "content-length" => body.bytesize.to_s, "cache-control" => "no-store" }, [body]]
      end

      def log(env, error)
        id = env["action_dispatch.request_id"] || env["HTTP_X_REQUEST_ID"]
        @logger&.info("tenant descriptor refused: reason=#{error.reason}#{id ? " request_id=#{id}" : ''}")
      end
    end
  end
end
