# frozen_string_literal: true

require "openssl"
require "jwt"
require_relative "../tenant_proxy"

module TenantProxy
  # Signed descriptors in the app's own tests, so request tests (and anything calling
  # TenantProxy.with_tenant) run without a proxy. In test/test_helper.rb (or spec/rails_helper.rb):
  #
  #   require "tenant_proxy/test_helpers"
  #   TenantProxy::TestHelpers.install!
  #   TenantProxy::TestHelpers.register_tenant("acme", database: "myapp_test_acme")
  #
  #   class NotesTest < ActionDispatch::IntegrationTest
  #     include TenantProxy::TestHelpers
  #     test "lists acme's notes" do
  #       get "/notes", headers: tenant_proxy_headers("acme")
  #     end
  #   end
  #
  # The fixture key is a P-256 key made when the test process starts, trusted only by the
  # settings install! replaces, and install! refuses to run outside the test environment: a
  # test key can never verify in production.
  module TestHelpers
    ISSUER = "tenant-proxy-test"
    AUDIENCE = "test-app"
    Tenant = Struct.new(:slug, :host, :database, :db_host, :db_port, :epoch, :state, keyword_init: true)

    class << self
      # The fixture signing key (private; this process only).
      def key
        @key ||= OpenSSL::PKey::EC.generate("prime256v1")
      end

      def kid
        Descriptor.ec_kid(Descriptor.ec_public_jwk(key))
      end

      # The fixture key's public key set, as the proxy publishes its own.
      def jwks
        { "keys" => [Descriptor.ec_public_jwk(key).merge("kid" => kid, "alg" => "ES256", "use" => "sig")] }
      end

      # Makes the app trust the fixture key (issuer ISSUER, audience AUDIENCE) and resolve tenants
      # from register_tenant instead of the ops API.
      def install!(settings = TenantProxy.settings)
        env = defined?(::Rails) && ::Rails.respond_to?(:env) ? ::Rails.env.to_s : ENV["RACK_ENV"].to_s
        raise ConfigurationError, "tenant_proxy: TestHelpers.install! runs in the test environment only (Rails.env is #{env.inspect})" unless env == "test"

        settings.override(issuer: ISSUER, audience: AUDIENCE, jwks: jwks, jwks_url: nil, keys_file: nil, secrets: nil,
                          resolver: Resolver.new(settings))
      end

      def tenants
        @tenants ||= {}
      end

      # Declares a tenant for TenantProxy.with_tenant and the helpers; defaults: host
      # "<slug>.example.test", database "<app's database>_<slug>" on the app's database server.
      def register_tenant(slug, database: nil, host: nil, db_host: nil, db_port: nil, epoch: 1, state: "active")
        tenants[slug.to_s] = Tenant.new(slug: slug.to_s, host: host, database: database, db_host: db_host, db_port: db_port,
                                        epoch: epoch, state: state)
      end

      def tenant(slug)
        base = tenants[slug.to_s] || Tenant.new(slug: slug.to_s, epoch: 1, state: "active")
        primary = defined?(::ActiveRecord::Base) ? ActiveRecordAdapter.primary_config : {}
        Tenant.new(slug: base.slug, host: base.host || "#{base.slug}.example.test",
                   database: base.database || "#{primary[:database] || 'app'}_#{base.slug}",
                   db_host: base.db_host || primary[:host] || "localhost", db_port: base.db_port || primary[:port] || 5432,
                   epoch: base.epoch, state: base.state)
      end

      # A descriptor for slug signed with the fixture key; claims: overrides (e.g. exp:, epoch:).
      def descriptor(slug, ttl: 60, now: Time.now.to_i, **claims)
        t = tenant(slug)
        payload = { "v" => 1, "iss" => ISSUER, "aud" => AUDIENCE, "sub" => t.slug, "host" => t.host,
                    "db" => { "name" => t.database, "host" => t.db_host.to_s, "port" => Integer(t.db_port) }, "epoch" => t.epoch,
                    "iat" => now, "nbf" => now, "exp" => now + ttl }
        claims.each { |k, v| payload[k.to_s] = v }
        JWT.encode(payload, key, "ES256", { "typ" => Descriptor::TYP, "kid" => kid })
      end

      # Creates slug's test database unless it exists, and runs the tenant migrations on it. Call it
      # once per test process (test_helper.rb), outside the tests' transactions.
      def prepare_tenant(slug, out: File.open(File::NULL, "w"))
        t = tenant(slug)
        descriptor = Struct.new(:db).new(Descriptor::Database.new(name: t.database, host: t.db_host, port: Integer(t.db_port)))
        create_database(TenantProxy.switcher.config_for(descriptor))
        paths = Array(TenantProxy.settings[:migrations_paths]).map { |p| ::Rails.root.join(p).to_s }
        migrator = Migrator.new(resolver: TenantProxy.resolver, config_for: ->(d) { TenantProxy.switcher.config_for(d) }, paths: paths,
                                concurrency: 1, out: out)
        migrator.run(:migrate, tenants: [t.slug]) || raise(Error, "tenant_proxy: migrating #{t.slug}'s test database failed")
      end

      private

      # Through a pool of its own on the server's maintenance database: Rails' DatabaseTasks.create
      # would repoint ActiveRecord::Base (the app's own database) at the tenant's.
      def create_database(config)
        maintenance = config.merge(database: config[:adapter].to_s.start_with?("postgres") ? "postgres" : nil).compact
        ActiveRecordAdapter.with_base_connection(:tenant_proxy_create_database, maintenance) do
          connection = ActiveRecordAdapter.base.connection
          connection.create_database(config[:database]) unless database_exists?(connection, config[:database])
        end
      end

      def database_exists?(connection, name)
        return false unless connection.adapter_name.downcase.start_with?("postg")

        !connection.select_value("SELECT 1 FROM pg_database WHERE datname = #{connection.quote(name)}").nil?
      end
    end

    # Resolves registered tenants by signing their descriptors (no ops API in tests).
    class Resolver
      def initialize(settings)
        @settings = settings
      end

      def descriptor_for(slug)
        t = TestHelpers.tenant(slug)
        @settings.verifier.verify(TestHelpers.descriptor(slug), request_host: t.host)
      end

      def state_of(slug)
        TestHelpers.tenant(slug).state
      end

      def each_tenant(state: nil, &block)
        list = TestHelpers.tenants.keys.sort.map { |s| t = TestHelpers.tenant(s); { "slug" => s, "state" => t.state, "host" => t.host } }
        list = list.select { |t| t["state"] == state } if state
        list.each(&block)
      end
    end

    # The descriptor header value for a request to slug's host.
    def tenant_proxy_descriptor(slug, **claims)
      TestHelpers.descriptor(slug, **claims)
    end

    # Headers of a request as the proxy forwards it for slug: its host and a signed descriptor.
    def tenant_proxy_headers(slug, **claims)
      host = TestHelpers.tenant(slug).host
      { "Host" => host, "X-Forwarded-Host" => host, TenantProxy.settings.header => tenant_proxy_descriptor(slug, **claims) }
    end
  end
end
