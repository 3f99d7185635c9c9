# frozen_string_literal: true

# Shared fixtures (test/fixtures/descriptor-vectors.json) and a verifier that trusts them.
$LOAD_PATH.unshift(File.expand_path("../lib", __dir__))
require "json"
require "minitest/autorun"
require "tmpdir"
require "tenant_proxy"
require "tenant_proxy/active_record_switcher"
require "tenant_proxy/migrator"

module Vectors
  PATH = ENV.fetch("TENANT_PROXY_VECTORS", File.expand_path("../../../test/fixtures/descriptor-vectors.json", __dir__))
  DATA = JSON.parse(File.read(PATH)).freeze

  module_function

  def [](key)
    DATA.fetch(key)
  end

  def case_named(name)
    DATA.fetch("cases").find { |c| c["name"] == name } || raise(KeyError, name)
  end

  # A verifier trusting the fixture's JWKS and HS256 secret, at the fixture's fixed time.
  def verifier(**options)
    TenantProxy::Descriptor::Verifier.new(
      jwks: DATA["jwks"], secrets: DATA["keys"]["hs256"]["secret"],
      issuer: DATA["issuer"], audience: DATA["audience"], leeway: DATA["leeway"],
      clock: -> { DATA["now"] }, **options
    )
  end
end
