# frozen_string_literal: true

require_relative "test_helper"
require_relative "support/http_stub"

# The ops descriptor API client and the resolver on top of it, against a stand-in server that
# answers as the API's specification says (the real proxy's API is exercised end to end in
# test/rails-example.test.ts): the token is sent, answers are verified like request descriptors
# and cached until shortly before they expire, and each failure says what to check.
class OpsClientTest < Minitest::Test
  TOKEN = "t0ken-0123456789abcdef0123456789abcdef"
  VALID = Vectors.case_named("valid ES256")

  def setup
    @answers = {}
    @server = HttpStub.new do |path, headers|
      next error(401, "TENANT_PROXY_ERR_OPS_UNAUTHORIZED") unless headers["authorization"] == "Bearer #{TOKEN}"

      @answers.fetch(path) { error(404, "TENANT_PROXY_ERR_TENANT_NOT_FOUND") }
    end
    @now = Vectors["now"]
  end

  def teardown
    @server.close
  end

  def error(status, code)
    [status, JSON.generate({ "error" => { "code" => code, "message" => "x", "status" => status } })]
  end

  def client(token: TOKEN, url: @server.url, timeout: 1)
    TenantProxy::OpsClient.new(url: url, token: token, timeout: timeout)
  end

  def resolver(**options)
    TenantProxy::Resolver.new(client: client(**options), verifier: Vectors.verifier(clock: -> { @now }), clock: -> { @now })
  end

  def answer_acme(token: VALID["token"], host: "acme.example.com", tenant: "acme")
    @answers["/v1/tenants/acme/descriptor"] = [200, JSON.generate({ "tenant" => tenant, "state" => "maintenance", "host" => host,
                                                                     "descriptor" => token, "expiresAt" => "2027-01-15T08:01:00.000Z" })]
  end

  def test_a_descriptor_for_a_slug
    answer_acme
    r = resolver
    d = r.descriptor_for("acme")
    assert_equal ["acme", "acme_prod"], [d.tenant, d.db.name]
    assert_equal "maintenance", r.state_of("acme"), "every state is issued: migrations reach tenants in maintenance"
    assert_equal "Bearer #{TOKEN}", @server.requests.last.headers["authorization"]
  end

  def test_cached_until_shortly_before_it_expires
    answer_acme
    r = resolver
    r.descriptor_for("acme")
    @now += 30
    r.descriptor_for("acme")
    assert_equal 1, @server.count
    @now += 20 # within 10 s of exp
    r.descriptor_for("acme")
    assert_equal 2, @server.count
  end

  def test_a_refused_token
    error = assert_raises(TenantProxy::OpsApiRefused) { resolver(token: "wrong-token-0123456789abcdef0123456789").descriptor_for("acme") }
    assert_match(/refused the token/, error.message)
    assert_match(/TENANT_DESCRIPTOR_API_TOKEN/, error.message)
    refute_match(/wrong-token/, error.message, "the token is never in a message")
  end

  def test_an_unknown_tenant
    assert_raises(TenantProxy::UnknownTenant) { resolver.descriptor_for("nobody") }
  end

  def test_the_api_disabled_on_the_proxy
    @server.handler = ->(_p, _h) { error(404, "TENANT_PROXY_ERR_OPS_API_DISABLED") }
    error = assert_raises(TenantProxy::OpsApiRefused) { resolver.descriptor_for("acme") }
    assert_match(/TENANT_PROXY_OPS_DESCRIPTOR_API_TOKENS/, error.message)
  end

  def test_an_unreachable_api
    @server.dead!
    error = assert_raises(TenantProxy::OpsApiUnavailable) { resolver.descriptor_for("acme") }
    assert_match(/did not answer.*TENANT_DESCRIPTOR_API_URL/, error.message)
  end

  def test_a_hanging_api_is_bounded
    @server.mode = :hang
    started = Process.clock_gettime(Process::CLOCK_MONOTONIC)
    assert_raises(TenantProxy::OpsApiUnavailable) { resolver(timeout: 0.3).descriptor_for("acme") }
    assert_operator Process.clock_gettime(Process::CLOCK_MONOTONIC) - started, :<, 2
  end

  def test_a_redirect_is_not_followed
    @server.mode = :redirect
    @server.location = "http://127.0.0.1:1/elsewhere"
    assert_raises(TenantProxy::OpsApiRefused) { resolver.descriptor_for("acme") }
  end

  def test_an_answer_that_fails_verification
    answer_acme(host: "globex.example.com")
    error = assert_raises(TenantProxy::OpsApiInvalidAnswer) { resolver.descriptor_for("acme") }
    assert_match(/host_mismatch/, error.message)
    answer_acme(token: Vectors.case_named("wrong aud (app A's token sent to app B)")["token"])
    assert_match(/audience/, assert_raises(TenantProxy::OpsApiInvalidAnswer) { resolver.descriptor_for("acme") }.message)
  end

  def test_a_descriptor_for_another_tenant_is_refused
    @answers["/v1/tenants/globex/descriptor"] = [200, JSON.generate({ "tenant" => "globex", "state" => "active", "host" => "acme.example.com",
                                                                       "descriptor" => VALID["token"] })]
    assert_raises(TenantProxy::OpsApiInvalidAnswer) { resolver.descriptor_for("globex") }
  end

  def test_slugs_are_checked_before_any_request
    assert_raises(ArgumentError) { resolver.descriptor_for("../../metrics") }
    assert_equal 0, @server.count
  end

  def test_the_tenant_list_pages_until_next_is_null
    pages = {
      "/v1/tenants?limit=2" => { "tenants" => [{ "slug" => "a" }, { "slug" => "b" }], "next" => "b" },
      # A page may hold no tenant and still say where to continue.
      "/v1/tenants?after=b&limit=2" => { "tenants" => [], "next" => "m" },
      "/v1/tenants?after=m&limit=2" => { "tenants" => [{ "slug" => "n" }], "next" => nil }
    }
    pages.each { |path, body| @answers[path] = [200, JSON.generate(body)] }
    assert_equal %w[a b n], client.each_tenant(limit: 2).map { |t| t["slug"] }
    @answers["/v1/tenants?state=active&limit=2"] = [200, JSON.generate({ "tenants" => [{ "slug" => "z" }], "next" => nil })]
    assert_equal ["z"], client.each_tenant(state: "active", limit: 2).map { |t| t["slug"] }
  end
end
