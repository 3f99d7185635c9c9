# frozen_string_literal: true

require "json"
require "rack"
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
    # host: picks the request host from env. The default is Rack::Request#host, the host Rails'
    # request.host also reports (it follows X-Forwarded-Host, which tenant-proxy always sets to the
    # host it resolved).
    class Middleware
      ENV_KEY = "tenant_proxy.descriptor"
      MESSAGES = {
        400 => "tenant descriptor missing or malformed",
        401 => "tenant descriptor rejected",
        503 => "tenant descriptor keys unavailable"
      }.freeze

      def initialize(app, verifier:, header: "X-Tenant-Descriptor", skip_paths: ["/up"],
                     host: ->(env) { ::Rack::Request.new(env).host }, logger: nil)
        @app = app
        @verifier = verifier
        @env_header = "HTTP_#{header.upcase.tr('-', '_')}"
        @skip_paths = skip_paths.to_set
        @host = host
        @logger = logger
      end

      def call(env)
        return @app.call(env) if @skip_paths.include?(env["PATH_INFO"])

        begin
          env[ENV_KEY] = @verifier.verify(env[@env_header], request_host: @host.call(env))
        rescue Error => e
          return refuse(e)
        end
        @app.call(env)
      end

      private

      def refuse(error)
        # The reason code only: never the token, never key material.
        @logger&.info("tenant descriptor refused: #{error.reason}")
        body = JSON.generate({ error: MESSAGES.fetch(error.status), reason: error.reason })
        [error.status, { "content-type" => "application/json", "content-length" => body.bytesize.to_s, "cache-control" => "no-store" }, [body]]
      end
    end
  end
end
