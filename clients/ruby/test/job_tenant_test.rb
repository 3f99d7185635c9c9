# frozen_string_literal: true

require_relative "test_helper"
require_relative "support/recording_switcher"
require "active_job"
require "tenant_proxy/job_tenant"

# ActiveJob (the real one) with TenantProxy::JobTenant: jobs carry their tenant from enqueue to
# perform, in a payload a later version of the app still reads.
class JobTenantTest < Minitest::Test
  include RecordingTenants

  # Records where each perform ran, and where its argument was deserialized.
  class NoteJob < ActiveJob::Base
    PERFORMED = []

    def perform(thing)
      PERFORMED << [TenantProxy.current_tenant, TenantProxy.global?, thing.loaded_in]
    end
  end

  # An argument that, like a GlobalID of a tenant record, needs the tenant to be found again.
  class Thing
    attr_reader :loaded_in

    def initialize(loaded_in = nil)
      @loaded_in = loaded_in
    end
  end

  class ThingSerializer < ActiveJob::Serializers::ObjectSerializer
    def serialize(_thing)
      super({})
    end

    def deserialize(_hash)
      Thing.new(TenantProxy.current_tenant)
    end

    private

    def klass
      Thing
    end
  end

  ActiveJob::Base.prepend(TenantProxy::JobTenant)
  ActiveJob::Serializers.add_serializers(ThingSerializer)
  ActiveJob::Base.logger = Logger.new(nil)

  def setup
    install_recording_tenants
    ActiveJob::Base.queue_adapter = :test
    NoteJob::PERFORMED.clear
  end

  def teardown
    remove_recording_tenants
  end

  def enqueued
    ActiveJob::Base.queue_adapter.enqueued_jobs
  end

  def test_two_tenants_enqueue_the_same_job_and_each_performs_in_its_own
    TenantProxy.with_tenant("acme") { NoteJob.perform_later(Thing.new) }
    TenantProxy.with_tenant("globex") { NoteJob.perform_later(Thing.new) }
    payloads = enqueued.map { |j| JSON.parse(JSON.generate(j)) } # as a queue stores them
    assert_equal %w[acme globex], payloads.map { |p| p["tenant_proxy_tenant"] }
    payloads.each { |p| ActiveJob::Base.execute(p) }
    assert_equal [["acme", false, "acme"], ["globex", false, "globex"]], NoteJob::PERFORMED,
                 "performed, arguments included, in the tenant it was enqueued for"
  end

  def test_a_payload_enqueued_by_an_earlier_version_still_performs_for_its_tenant
    # What the gem writes (a frozen copy): the key and its meaning are a stable interface.
    payload = {
      "job_class" => NoteJob.name, "job_id" => "5d2f0c83-5d61-4b68-9d0f-3c9c6a5b0e11", "provider_job_id" => nil,
      "queue_name" => "default", "priority" => nil,
      "arguments" => [{ "_aj_serialized" => ThingSerializer.name }],
      "executions" => 0, "exception_executions" => {}, "locale" => "en", "timezone" => "UTC",
      "enqueued_at" => "2026-11-30T10:00:00Z", "tenant_proxy_tenant" => "acme"
    }
    ActiveJob::Base.execute(payload)
    assert_equal [["acme", false, "acme"]], NoteJob::PERFORMED
  end

  def test_a_job_enqueued_with_no_tenant_performs_with_none
    TenantProxy.global { NoteJob.perform_later(Thing.new) }
    payload = JSON.parse(JSON.generate(enqueued.last))
    refute payload.key?("tenant_proxy_tenant")
    TenantProxy.with_tenant("globex") { ActiveJob::Base.execute(payload) } # e.g. the inline adapter inside a request
    assert_equal [[nil, true, nil]], NoteJob::PERFORMED, "never the tenant of whoever happens to run it"
  end

  def test_a_retried_job_keeps_its_tenant
    TenantProxy.with_tenant("acme") { NoteJob.perform_later(Thing.new) }
    job = ActiveJob::Base.deserialize(JSON.parse(JSON.generate(enqueued.last)))
    assert_equal "acme", TenantProxy.with_tenant("globex") { job.serialize["tenant_proxy_tenant"] }
  end
end
