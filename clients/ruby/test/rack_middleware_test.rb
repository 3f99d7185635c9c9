# frozen_string_literal: true

require_relative "test_helper"
require "rack/mock"
require "tenant_proxy/descriptor/rack"

# The Rack middleware, called with envs built by Rack::MockRequest (part of rack itself).
class RackMiddlewareTest < Minitest::Test
  ENV_KEY = TenantProxy::Descriptor::Middleware::ENV_KEY
  VALID = Vectors.case_named("valid ES256")["token"]

  APP = lambda do |env|
    d = env.fetch(ENV_KEY)
    [200, { "content-type" => "text/plain" }, ["#{d.tenant} #{d.db.name}"]]
  end

  def setup
    @app = TenantProxy::Descriptor::Middleware.new(APP, verifier: Vectors.verifier, skip_paths: ["/up"])
  end

  def call(path: "/orders", host: "acme.example.com", token: VALID, app: @app, **extra)
    env = Rack::MockRequest.env_for("http://app.internal:3000#{path}", **extra)
    env["HTTP_HOST"] = host if host
    env["HTTP_X_TENANT_DESCRIPTOR"] = token if token
    status, headers, body = app.call(env)
    text = +""
    body.each { |part| text << part }
    [status, headers, text, env]
  end

  def reason(text)
    JSON.parse(text).fetch("reason")
  end

  def test_valid_descriptor_reaches_the_app
    status, _, text, env = call(host: "ACME.example.com:8080")
    assert_equal [200, "acme acme_prod"], [status, text]
    assert env[ENV_KEY].frozen?
  end

  def test_missing_is_400_with_json
    status, headers, text, env = call(token: nil)
    assert_equal [400, "missing"], [status, reason(text)]
    assert_equal "application/json", headers["content-type"]
    refute env.key?(ENV_KEY)
  end

  def test_duplicated_header_is_400
    status, _, text, = call(token: Vectors.case_named("two header values joined with a comma")["token"])
    assert_equal [400, "comma"], [status, reason(text)]
  end

  def test_invalid_is_401_with_reason_and_no_token_echo
    ["expired", "wrong aud (app A's token sent to app B)", "alg none", "embedded jwk header (attacker key, our kid)"].each do |name|
      c = Vectors.case_named(name)
      status, _, text, = call(token: c["token"])
      assert_equal [401, c["reason"]], [status, reason(text)], name
      refute_includes text, c["token"]
    end
  end

  def test_other_tenants_host_is_401
    status, _, text, = call(host: "globex.example.com")
    assert_equal [401, "host_mismatch"], [status, reason(text)]
  end

  def test_the_host_is_the_x_forwarded_host_the_proxy_set
    # tenant-proxy sets X-Forwarded-Host to the host it chose the tenant for (Host may be rewritten).
    status, = call(host: "app.internal:3000", "HTTP_X_FORWARDED_HOST" => "acme.example.com")
    assert_equal 200, status
    status, _, text, = call(host: "acme.example.com", "HTTP_X_FORWARDED_HOST" => "globex.example.com")
    assert_equal [401, "host_mismatch"], [status, reason(text)]
  end

  def test_forwarded_is_never_the_host
    # Rack 3 (Rails 7.1+) derives the request host from Forwarded first; the claim is compared with
    # the header the proxy signed for, whatever Forwarded says.
    status, = call(host: "app.internal:3000", "HTTP_X_FORWARDED_HOST" => "acme.example.com", "HTTP_FORWARDED" => "host=globex.example.com")
    assert_equal 200, status
    status, _, text, = call(host: "app.internal:3000", "HTTP_X_FORWARDED_HOST" => "globex.example.com", "HTTP_FORWARDED" => "host=acme.example.com")
    assert_equal [401, "host_mismatch"], [status, reason(text)]
  end

  def test_a_list_in_x_forwarded_host_matches_nothing
    status, _, text, = call("HTTP_X_FORWARDED_HOST" => "acme.example.com, globex.example.com")
    assert_equal [401, "host_mismatch"], [status, reason(text)]
  end

  def test_the_verifier_can_be_built_on_first_use
    built = 0
    app = TenantProxy::Descriptor::Middleware.new(APP, verifier: -> { built += 1; Vectors.verifier })
    assert_equal 0, built
    status, = call(app: app)
    assert_equal [200, 1], [status, built]
  end

  def test_custom_host_lookup
    app = TenantProxy::Descriptor::Middleware.new(APP, verifier: Vectors.verifier, host: ->(env) { env["HTTP_HOST"] })
    status, = call(app: app, host: "acme.example.com", "HTTP_X_FORWARDED_HOST" => "globex.example.com")
    assert_equal 200, status
  end

  def test_skip_paths
    up = TenantProxy::Descriptor::Middleware.new(->(_env) { [200, {}, ["up"]] }, verifier: Vectors.verifier)
    status, _, text, = call(app: up, path: "/up", token: nil)
    assert_equal [200, "up"], [status, text]
  end

  def test_unreachable_key_set_is_503
    verifier = TenantProxy::Descriptor::Verifier.new(jwks_url: "http://tenant-proxy.invalid/jwks.json", fetch: ->(_url) { raise Errno::ECONNREFUSED }, jwks_timeout: 1,
                                                     issuer: Vectors["issuer"], audience: Vectors["audience"], clock: -> { Vectors["now"] })
    app = TenantProxy::Descriptor::Middleware.new(APP, verifier: verifier)
    status, _, text, = call(app: app)
    assert_equal [503, "jwks_unavailable"], [status, reason(text)]
  end
end
