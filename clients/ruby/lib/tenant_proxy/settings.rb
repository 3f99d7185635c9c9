# frozen_string_literal: true

module TenantProxy
  # The app side's settings, read when first needed and never at boot, so `assets:precompile`,
  # `db:migrate` and `rails console` run without them. Each comes from config.tenant_proxy.<name>
  # (in Rails; or the options Hash given to Settings.new) or else from its environment variable.
  #
  # The variables are TENANT_DESCRIPTOR_*: TENANT_PROXY_* belongs to the proxy, which refuses
  # unknown ones and exits 78, so an app sharing its environment (the proxy inside the app
  # image) must never add one.
  class Settings
    ENV_NAMES = {
      issuer: "TENANT_DESCRIPTOR_ISSUER",
      audience: "TENANT_DESCRIPTOR_AUDIENCE",
      jwks_url: "TENANT_DESCRIPTOR_JWKS_URL",
      keys_file: "TENANT_DESCRIPTOR_KEYS_FILE",
      api_url: "TENANT_DESCRIPTOR_API_URL",
      api_token: "TENANT_DESCRIPTOR_API_TOKEN"
    }.freeze

    MEANING = {
      issuer: "the proxy's deploymentId",
      audience: "this app's descriptor.audience",
      jwks_url: "the proxy's key set, http://<proxy>:9394/.well-known/tenant-proxy/jwks.json",
      keys_file: "a file with the proxy's public keys (JWKS or PEM)",
      api_url: "the proxy's ops listener, http://<proxy>:9394",
      api_token: "one of the proxy's ops.descriptorApi.tokens"
    }.freeze

    DEFAULTS = {
      header: "X-Tenant-Descriptor",
      leeway: 5,
      jwks_max_age: 60,
      jwks_cooldown: 30,
      jwks_timeout: 2,
      api_timeout: 5,
      skip_paths: ["/up"],
      passthrough_hosts: [],
      models: ["TenantRecord"],
      max_pools: 20,
      database: {},
      migrations_paths: ["db/tenant_migrate"],
      migrate_concurrency: 4,
      cache_namespace: true,
      log_tags: true,
      jobs: true,
      action_cable: true,
      active_storage: true
    }.freeze

    def initialize(options = {}, env: ENV)
      @options = options
      @overrides = {}
      @env = env
      @mutex = Mutex.new
      @verifier = nil
      @resolver = nil
    end

    # Replaces where options come from (the Railtie gives config.tenant_proxy) and forgets what
    # was built from the old ones.
    def options=(options)
      @mutex.synchronize do
        @options = options
        @verifier = nil
        @resolver = nil
      end
    end

    # Replaces settings whatever config and environment say (TenantProxy::TestHelpers uses it);
    # a nil value unsets one.
    def override(values)
      @mutex.synchronize do
        @overrides.merge!(values.transform_keys(&:to_sym))
        @verifier = nil
        @resolver = nil
      end
    end

    # A setting with its default; nil when neither set nor defaulted.
    def [](name)
      return @overrides[name] if @overrides.key?(name)

      value = option(name)
      value = @env[ENV_NAMES[name]] if blank?(value) && ENV_NAMES.key?(name)
      value = DEFAULTS[name] if value.nil?
      blank?(value) ? nil : value
    end

    # A setting that must be there; raises ConfigurationError naming both ways to set it.
    def fetch(name)
      self[name] || raise(ConfigurationError, missing_message(name))
    end

    def header
      self[:header]
    end

    # "HTTP_X_TENANT_DESCRIPTOR": the Rack env key of the descriptor header.
    def header_env_key
      "HTTP_#{header.upcase.tr('-', '_')}"
    end

    # The verifier, built on first use from issuer, audience and one key source.
    def verifier
      @verifier || @mutex.synchronize { @verifier ||= build_verifier }
    end

    # Turns a tenant slug into a verified descriptor outside a request (ops API by default).
    def resolver
      @resolver || @mutex.synchronize { @resolver ||= option(:resolver) || build_resolver }
    end

    def missing_message(name)
      env = ENV_NAMES[name] ? " or the environment variable #{ENV_NAMES[name]}" : ""
      meaning = MEANING[name] ? " (#{MEANING[name]})" : ""
      "tenant_proxy: #{name} is not set: set config.tenant_proxy.#{name}#{env}#{meaning}"
    end

    private

    def option(name)
      return @overrides[name] if @overrides.key?(name)
      return nil if @options.nil?

      value = @options[name]
      value = @options[name.to_s] if value.nil? && @options.is_a?(Hash)
      value
    end

    def blank?(value)
      value.nil? || (value.respond_to?(:empty?) && value.empty?)
    end

    def build_verifier
      issuer = fetch(:issuer)
      audience = fetch(:audience)
      sources = { jwks: option(:jwks), jwks_url: self[:jwks_url], keys_file: self[:keys_file], secrets: option(:secrets) }.compact
      if sources.empty?
        raise ConfigurationError, "tenant_proxy: no key source: set config.tenant_proxy.jwks_url or TENANT_DESCRIPTOR_JWKS_URL " \
                                  "(#{MEANING[:jwks_url]}), or config.tenant_proxy.keys_file or TENANT_DESCRIPTOR_KEYS_FILE"
      end

      Descriptor::Verifier.new(issuer: issuer, audience: audience, leeway: self[:leeway],
                               jwks_max_age: self[:jwks_max_age], jwks_cooldown: self[:jwks_cooldown],
                               jwks_timeout: self[:jwks_timeout], **sources)
    rescue ArgumentError => e
      raise ConfigurationError, "tenant_proxy: invalid key settings: #{e.message}"
    end

    def build_resolver
      settings = self
      client = OpsClient.new(url: -> { settings.fetch(:api_url) }, token: -> { settings.fetch(:api_token) }, timeout: self[:api_timeout])
      Resolver.new(client: client, verifier: -> { settings.verifier })
    end
  end
end
