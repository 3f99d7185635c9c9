# frozen_string_literal: true

require_relative "test_helper"
require_relative "support/http_stub"

# The key set URL against a real HTTP server that answers, hangs, dies or redirects: one fetch at
# a time, bounded by the timeout, the held keys served while a refresh runs in the background,
# unknown kids refused at once and refetched at most once per cooldown, redirects not followed.
# The clock that decides max age and cooldown is injected; waits are real and bounded.
class KeySetTest < Minitest::Test
  TIMEOUT = 0.4 # seconds, the key-set fetch bound in these tests
  ROTATED = "valid ES256 signed by the rotated key (both keys are in the JWKS during the overlap)"
  UNKNOWN = "unknown kid (signed by a key nobody trusts)"

  def setup
    @now = Vectors["now"]
    @primary, @rotated = Vectors["jwks"]["keys"]
    @keys = [@primary]
    @server = HttpStub.new { |_path, _headers| [200, JSON.generate({ "keys" => @keys })] }
  end

  def teardown
    @server.close
  end

  def verifier(**options)
    TenantProxy::Descriptor::Verifier.new(jwks_url: @server.url("/.well-known/tenant-proxy/jwks.json"), clock: -> { @now },
                                          issuer: Vectors["issuer"], audience: Vectors["audience"],
                                          **{ jwks_timeout: TIMEOUT, jwks_max_age: 20, jwks_cooldown: 10 }.merge(options))
  end

  def verify(v, name = "valid ES256")
    c = Vectors.case_named(name)
    v.verify(c["token"], request_host: c["request_host"])
  end

  def timed
    started = Process.clock_gettime(Process::CLOCK_MONOTONIC)
    result = yield
    [result, Process.clock_gettime(Process::CLOCK_MONOTONIC) - started]
  end

  # Four requests at once, each timed; returns [results or errors, seconds].
  def parallel(v, name = "valid ES256", n: 4)
    Array.new(n) do
      Thread.new do
        timed do
          verify(v, name)
        rescue TenantProxy::Descriptor::Error => e
          e
        end
      end
    end.map(&:value)
  end

  def test_fetches_once_then_serves_from_memory
    v = verifier
    3.times { assert_equal "acme", verify(v).tenant }
    assert_equal 1, @server.count
    assert_equal 1, v.jwks_fetches
  end

  def test_hanging_ops_port_adds_no_latency_after_the_first_fetch
    v = verifier
    verify(v)
    @server.mode = :hang
    @now += 21 # past max age
    results = parallel(v)
    # Before: every request refetched under one lock and waited for the hanging port in turn
    # (4 parallel requests took 4, 8, 12 and 16 s).
    results.each do |d, seconds|
      assert_equal "acme", d.tenant
      assert_operator seconds, :<, TIMEOUT / 2, "a request waited for the key set (#{seconds} s)"
    end
    assert_equal 2, v.jwks_fetches, "one background refresh for four requests"
    assert v.remote.settle(TIMEOUT * 4), "the refresh ends within its bound"
    assert_equal "acme", verify(v).tenant, "the held keys survive the failed refresh"
  end

  def test_dead_ops_port_adds_no_latency_after_the_first_fetch
    v = verifier
    verify(v)
    @server.dead!
    @now += 21
    parallel(v).each do |d, seconds|
      assert_equal "acme", d.tenant
      assert_operator seconds, :<, TIMEOUT / 2
    end
    assert v.remote.settle(TIMEOUT * 4)
    assert_equal "acme", verify(v).tenant
  end

  def test_refresh_after_max_age_picks_up_a_new_key_in_the_background
    v = verifier
    verify(v)
    @keys = [@rotated] # the old key retired, the new one published
    @now += 21
    assert_equal "acme", verify(v).tenant, "the held key set still answers while the refresh runs"
    assert v.remote.settle
    assert_equal "acme", verify(v, ROTATED).tenant
    assert_equal "unknown_kid", assert_raises(TenantProxy::Descriptor::Error) { verify(v) }.reason
  end

  def test_first_fetch_against_a_hanging_port_is_bounded_and_shared
    @server.mode = :hang
    v = verifier
    results = parallel(v)
    results.each do |error, seconds|
      assert_kind_of TenantProxy::Descriptor::KeySetUnavailable, error
      assert_equal [503, "jwks_unavailable"], [error.status, error.reason]
      assert_operator seconds, :<, TIMEOUT * 2, "waited #{seconds} s for a key set that never came"
    end
    assert v.remote.settle(TIMEOUT * 4)
    assert_equal 1, @server.count, "four waiting requests share one fetch"
  end

  def test_first_fetch_against_a_dead_port_fails_at_once
    @server.dead!
    error, seconds = timed { assert_raises(TenantProxy::Descriptor::KeySetUnavailable) { verify(verifier) } }
    assert_equal "jwks_unavailable", error.reason
    assert_operator seconds, :<, TIMEOUT
  end

  def test_unknown_kid_is_refused_at_once_and_refetched_in_the_background
    v = verifier
    verify(v)
    @keys = [@primary, @rotated] # the proxy publishes the next key
    @server.mode = :hang
    @now += 11 # past the cooldown of the first fetch
    error, seconds = timed { assert_raises(TenantProxy::Descriptor::Error) { verify(v, ROTATED) } }
    assert_equal "unknown_kid", error.reason
    assert_operator seconds, :<, TIMEOUT / 2, "an unknown kid never waits for a fetch"
    assert v.remote.settle(TIMEOUT * 4)
    @server.mode = :ok
    assert_equal "unknown_kid", assert_raises(TenantProxy::Descriptor::Error) { verify(v, ROTATED) }.reason
    assert_equal 2, v.jwks_fetches, "within the cooldown of the failed refresh: no new fetch"
    @now += 11
    assert_raises(TenantProxy::Descriptor::Error) { verify(v, ROTATED) }
    assert v.remote.settle
    assert_equal "acme", verify(v, ROTATED).tenant
    assert_equal 3, v.jwks_fetches
  end

  def test_forged_kids_cannot_hammer_the_proxy
    v = verifier
    verify(v)
    50.times { assert_equal "unknown_kid", assert_raises(TenantProxy::Descriptor::Error) { verify(v, UNKNOWN) }.reason }
    @now += 10
    50.times { assert_raises(TenantProxy::Descriptor::Error) { verify(v, UNKNOWN) } }
    assert v.remote.settle
    assert_equal 2, v.jwks_fetches
    assert_equal 2, @server.count
  end

  def test_redirects_are_not_followed
    target = HttpStub.new(body: JSON.generate(Vectors["jwks"]))
    @server.mode = :redirect
    @server.location = target.url("/jwks.json")
    error = assert_raises(TenantProxy::Descriptor::KeySetUnavailable) { verify(verifier) }
    assert_equal "jwks_unavailable", error.reason
    assert_match(/redirect/, error.message)
    assert_equal 0, target.count, "the redirect target was never asked"
  ensure
    target&.close
  end

  def test_a_forked_child_does_not_wait_for_its_parents_fetch
    v = verifier
    @server.mode = :hang
    Thread.new { verify(v) rescue nil } # a fetch in flight in this process
    deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + 5
    Thread.pass until @server.count == 1 || Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline
    reader, writer = IO.pipe
    pid = fork do
      reader.close
      result = begin
        verify(v)
        "verified"
      rescue TenantProxy::Descriptor::Error => e
        e.reason
      end
      writer.write(result)
      writer.close
      exit!(0)
    end
    writer.close
    Process.wait(pid)
    # The child started its own fetch rather than waiting on a thread that did not follow it.
    assert_includes %w[jwks_unavailable verified], reader.read
    assert_operator @server.count, :>=, 2
  end
end
