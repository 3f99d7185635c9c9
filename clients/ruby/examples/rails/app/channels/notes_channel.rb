# frozen_string_literal: true

# Streams "notes", which every tenant names alike; each tenant only hears its own.
class NotesChannel < ApplicationCable::Channel
  def subscribed
    stream_from "notes"
    transmit({ tenant: TenantProxy.current_tenant, database: Note.connection.current_database, notes: Note.order(:id).pluck(:title) })
  end
end
