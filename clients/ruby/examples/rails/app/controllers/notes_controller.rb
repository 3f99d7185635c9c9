# frozen_string_literal: true

# Every action runs against the database of the tenant the request's descriptor names.
class NotesController < ApplicationController
  def index
    render json: {
      tenant: TenantProxy.current_tenant,
      database: Note.connection.current_database,
      notes: Note.order(:id).pluck(:title),
      # Changes when development reloads the class.
      model: Note.object_id
    }
  end

  def create
    note = Note.create!(title: params.require(:title))
    ActionCable.server.broadcast("notes", { title: note.title })
    render json: { tenant: TenantProxy.current_tenant, id: note.id }, status: :created
  end

  def create_later
    NoteJob.perform_later(params.require(:title))
    head :accepted
  end

  # The same key for every tenant: each reads only what it wrote.
  def read_cache
    render json: { value: Rails.cache.read(params[:key]) }
  end

  def write_cache
    Rails.cache.write(params[:key], params.require(:value))
    head :no_content
  end

  def upload
    blob = ActiveStorage::Blob.create_and_upload!(io: StringIO.new(params.require(:content)), filename: "note.txt")
    render json: { key: blob.key }
  end

  def pools
    render json: TenantProxy.switcher.pools.stats
  end

  # Tenant data with no tenant: TenantProxy::NoTenant, never another database.
  def without_tenant
    TenantProxy.global { render json: { count: Note.count } }
  rescue TenantProxy::NoTenant => e
    render json: { error: e.class.name }, status: :internal_server_error
  end
end
