# frozen_string_literal: true

# Enqueued during a request, performed later on a worker thread: against the same tenant.
class NoteJob < ApplicationJob
  def perform(title)
    Note.create!(title: "#{title} (by job for #{TenantProxy.current_tenant})")
  end
end
