# frozen_string_literal: true

require_relative "test_helper"
require "rack/mock"
require "tenant_proxy/middleware"

# The two middlewares the Railtie inserts, called with Rack::MockRequest envs: what passes without
# a descriptor, and the answer to a descriptor older than its tenant's last move.
class RailsMiddlewareTest < Minitest::Test
  VALID = Vectors.case_named("valid ES256")

  def settings(**options)
    TenantProxy::Settings.new({ issuer: Vectors["issuer"], audience: Vectors["audience"], jwks: Vectors["jwks"] }.merge(options), env: {})
  end

  def call(app, path: "/notes", host: "acme.example.com", token: VALID["token"])
    env = Rack::MockRequest.env_for("http://app.internal:3000#{path}")
    env["HTTP_HOST"] = host
    env["HTTP_X_TENANT_DESCRIPTOR"] = token if token
    status, headers, body = app.call(env)
    text = +""
    body.each { |part| text << part }
    [status, headers, text, env]
  end

  SEEN = ->(env) { [200, {}, [env[TenantProxy::ENV_KEY]&.tenant.to_s]] }

  def test_skip_paths_take_strings_and_regexps
    app = TenantProxy::Middleware::Verify.new(SEEN, settings(skip_paths: ["/up", %r{\A/assets/}]))
    assert_equal [200, ""], call(app, path: "/up", token: nil).values_at(0, 2)
    assert_equal [200, ""], call(app, path: "/assets/app.css", token: nil).values_at(0, 2)
    assert_equal 400, call(app, path: "/notes", token: nil)[0]
  end

  def test_passthrough_hosts_run_with_no_tenant
    app = TenantProxy::Middleware::Verify.new(SEEN, settings(passthrough_hosts: ["www.example.com"]))
    assert_equal [200, ""], call(app, host: "WWW.example.com:443", token: nil).values_at(0, 2)
    assert_equal 400, call(app, host: "acme.example.com", token: nil)[0], "other hosts still need a descriptor"
  end

  def test_settings_are_read_on_the_first_request
    app = TenantProxy::Middleware::Verify.new(SEEN, TenantProxy::Settings.new({}, env: {}))
    error = assert_raises(TenantProxy::ConfigurationError) { call(app) }
    assert_match(/TENANT_DESCRIPTOR_ISSUER/, error.message)
  end

  def test_a_stale_descriptor_is_answered_503_with_retry_after
    switcher = Object.new
    def switcher.checkout(_descriptor)
      raise TenantProxy::StaleDescriptor, "acme moved"
    end
    TenantProxy.switcher = switcher
    app = TenantProxy::Middleware::Switch.new(->(_env) { raise "not reached" })
    env = Rack::MockRequest.env_for("/notes")
    env[TenantProxy::ENV_KEY] = Struct.new(:tenant, :epoch).new("acme", 1)
    status, headers, body = app.call(env)
    assert_equal [503, "1"], [status, headers["retry-after"]]
    assert_equal "stale_epoch", JSON.parse(body.join)["reason"]
  ensure
    TenantProxy.switcher = nil
  end

  def test_the_log_tag_names_the_tenant
    request = Struct.new(:env).new({ TenantProxy::ENV_KEY => Struct.new(:tenant).new("acme") })
    assert_equal "tenant=acme", TenantProxy::Middleware::LOG_TAG.call(request)
    assert_equal "tenant=-", TenantProxy::Middleware::LOG_TAG.call(Struct.new(:env).new({}))
  end
end
