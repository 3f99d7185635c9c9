# frozen_string_literal: true

require_relative "test_helper"

# The JWKS URL cache: one fetch, refetch after max age, and on an unknown kid at most once per cooldown.
class JwksUrlTest < Minitest::Test
  URL = "http://tenant-proxy.invalid:9394/.well-known/tenant-proxy/jwks.json"
  ROTATED = "valid ES256 signed by the rotated key (both keys are in the JWKS during the overlap)"
  UNKNOWN = "unknown kid (signed by a key nobody trusts)"

  # Serves a JWKS from memory; keys can change between calls (a rotation).
  class FakeKeySet
    attr_accessor :keys, :fail
    attr_reader :urls

    def initialize(keys)
      @keys = keys
      @urls = []
      @fail = false
    end

    def call(url)
      @urls << url
      raise Errno::ECONNREFUSED if @fail

      JSON.generate({ "keys" => @keys })
    end
  end

  def setup
    @now = Vectors["now"]
    @primary, @rotated = Vectors["jwks"]["keys"]
    @server = FakeKeySet.new([@primary])
    @verifier = remote_verifier
  end

  def remote_verifier(**options)
    TenantProxy::Descriptor::Verifier.new(jwks_url: URL, fetch: @server, clock: -> { @now }, issuer: Vectors["issuer"],
                                          audience: Vectors["audience"], jwks_cooldown: 30, jwks_max_age: 60, **options)
  end

  def verify(name, verifier = @verifier)
    c = Vectors.case_named(name)
    verifier.verify(c["token"], request_host: c["request_host"])
  end

  def assert_reason(reason, &block)
    error = assert_raises(TenantProxy::Descriptor::Error, &block)
    assert_equal reason, error.reason
    error
  end

  def test_fetches_once_and_caches
    verify("valid ES256")
    verify("valid ES256")
    assert_equal [URL], @server.urls
  end

  def test_unknown_kid_refetches_at_most_once_per_cooldown
    verify("valid ES256")
    @server.keys = [@primary, @rotated] # the proxy publishes the next key
    @now += 10
    assert_reason("unknown_kid") { verify(ROTATED) } # within the cooldown of the first fetch
    assert_equal 1, @verifier.jwks_fetches
    @now += 20
    assert_equal "acme", verify(ROTATED).tenant
    assert_equal 2, @verifier.jwks_fetches
  end

  def test_forged_kids_cannot_hammer_the_proxy
    verify("valid ES256")
    50.times { assert_reason("unknown_kid") { verify(UNKNOWN) } }
    assert_equal 1, @verifier.jwks_fetches
    @now += 30
    2.times { assert_reason("unknown_kid") { verify(UNKNOWN) } }
    assert_equal 2, @verifier.jwks_fetches
  end

  def test_refetches_after_max_age_and_drops_retired_keys
    @server.keys = [@primary, @rotated]
    verify(ROTATED)
    @server.keys = [@rotated] # the old key is retired
    @now += 60
    assert_reason("unknown_kid") { verify("valid ES256") }
  end

  def test_unavailable_key_set
    @server.fail = true
    error = assert_reason("jwks_unavailable") { verify("valid ES256") }
    assert_equal 503, error.status
    assert_kind_of TenantProxy::Descriptor::KeySetUnavailable, error
  end

  def test_stale_keys_are_kept_when_a_refetch_fails
    verifier = remote_verifier(jwks_max_age: 10)
    verify("valid ES256", verifier)
    @server.fail = true
    @now += 11 # past max age: the refetch fails, the cached keys still verify
    assert_equal "acme", verify("valid ES256", verifier).tenant
    assert_equal 2, verifier.jwks_fetches
  end
end
