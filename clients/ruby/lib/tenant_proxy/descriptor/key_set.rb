# frozen_string_literal: true

require "net/http"
require "uri"

module TenantProxy
  module Descriptor
    # The proxy's key set at a URL (docs/descriptor.md, "Key sets"), fetched so that a slow, hanging
    # or dead ops port never stalls requests once one fetch has succeeded:
    #
    # - one fetch at a time (single flight), each bounded by `timeout` seconds;
    # - after `max_age` the held keys keep verifying while one refresh runs in the background
    #   (stale-while-revalidate), and a failed refresh keeps them;
    # - an unknown kid while keys are held is refused at once and starts a background refresh, at
    #   most once per `cooldown` (a flood of forged kids cannot turn into a flood of fetches);
    # - only a request that finds no keys at all waits, for the one fetch in flight, at most
    #   `timeout` seconds, then gets jwks_unavailable (503).
    #
    # Before this, every request after the 60 s cache expired refetched under a lock: with the ops
    # port hanging, 4 parallel requests took 4, 8, 12 and 16 s.
    class RemoteKeySet
      attr_reader :url

      def initialize(url, fetch:, clock:, max_age:, cooldown:, timeout:)
        @url = url
        @fetch = fetch
        @clock = clock
        @max_age = max_age
        @cooldown = cooldown
        @timeout = timeout
        @mutex = Mutex.new
        @done = ConditionVariable.new
        @keys = nil
        @fetched_at = nil
        @attempted_at = nil
        @last_error = nil
        @thread = nil
        @pid = Process.pid
        @fetches = 0
      end

      # The key for kid, or nil; raises KeySetUnavailable only while no key set was ever fetched.
      def [](kid)
        keys = @mutex.synchronize do
          forget_fetch_of_parent
          now = @clock.call
          if @keys.nil?
            wait_for_first_keys
          else
            refresh(now) if now - @fetched_at >= @max_age
            refresh(now) if !@keys.key?(kid) && now - @attempted_at >= @cooldown
          end
          @keys
        end
        keys[kid]
      end

      # How many fetches were started.
      def fetches
        @mutex.synchronize { @fetches }
      end

      # Waits (at most `seconds`) for a background fetch in flight to end; true when none is left.
      # For tests and for warming the key set at start.
      def settle(seconds = @timeout * 2)
        thread = @mutex.synchronize { @thread }
        thread.nil? || !thread.join(seconds).nil?
      end

      private

      # Called with the mutex held. Waits on the fetch in flight (starting one if none is),
      # bounded by the timeout whatever the fetch does.
      def wait_for_first_keys
        refresh(@clock.call) unless @thread
        deadline = monotonic + @timeout
        while @keys.nil? && @thread
          left = deadline - monotonic
          break if left <= 0

          @done.wait(@mutex, left)
        end
        return if @keys

        reason = @thread ? "no answer within #{@timeout} s" : @last_error
        raise KeySetUnavailable.new("jwks_unavailable", "cannot fetch the key set #{@url}: #{reason}")
      end

      # Called with the mutex held: starts one background fetch unless one is in flight.
      def refresh(now)
        return if @thread

        @attempted_at = now
        @fetches += 1
        @thread = Thread.new { run_fetch }
        @thread.report_on_exception = false
      end

      def run_fetch
        keys = Descriptor.keys_from_jwks(@fetch.call(@url))
        error = nil
      rescue StandardError => e # network, HTTP, JSON or key error: keep what we had
        keys = nil
        error = "#{e.class}: #{e.message}"
      ensure
        @mutex.synchronize do
          if keys
            @keys = keys
            @fetched_at = @clock.call
          end
          @last_error = error
          @thread = nil
          @done.broadcast
        end
      end

      # A forked child (Puma workers) inherits the flag of a fetch whose thread did not follow it.
      def forget_fetch_of_parent
        return if @pid == Process.pid

        @pid = Process.pid
        @thread = nil
      end

      def monotonic
        Process.clock_gettime(Process::CLOCK_MONOTONIC)
      end
    end

    # Largest key set accepted, in bytes: the proxy's is a few hundred bytes per key.
    MAX_KEY_SET_BYTES = 1 << 20

    # GET url with every step bounded by timeout seconds and the whole fetch by twice that; the
    # body of a 200 answer. Redirects are refused, not followed (docs/descriptor.md, "Key sets"):
    # a key set must come from the configured URL only.
    def self.http_get(url, timeout: 2, headers: {})
      uri = URI(url)
      raise ArgumentError, "not an http(s) URL: #{url}" unless %w[http https].include?(uri.scheme)

      deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + (2 * timeout)
      # max_retries 0: Net::HTTP retries an idempotent request once after a read timeout, which
      # would double the bound and send a second request to a port that already hangs.
      Net::HTTP.start(uri.host, uri.port, use_ssl: uri.scheme == "https", open_timeout: timeout, read_timeout: timeout,
                                          write_timeout: timeout, ssl_timeout: timeout, max_retries: 0) do |http|
        request = Net::HTTP::Get.new(uri.request_uri, { "accept" => "application/json" }.merge(headers))
        http.request(request) do |response|
          return yield(response, read_body(response, deadline)) if block_given?
          raise "redirect to #{response['location'].inspect} refused (redirects are not followed)" if response.is_a?(Net::HTTPRedirection)
          raise "HTTP #{response.code}" unless response.code == "200"

          return read_body(response, deadline)
        end
      end
    end

    def self.read_body(response, deadline)
      body = +""
      response.read_body do |chunk|
        body << chunk
        raise "answer over #{MAX_KEY_SET_BYTES} bytes" if body.bytesize > MAX_KEY_SET_BYTES
        raise "answer not complete in time" if Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline
      end
      body
    end
  end
end
