# frozen_string_literal: true

module ApplicationCable
  # Bound to the tenant of its upgrade request (verified like any request).
  class Connection < ActionCable::Connection::Base
  end
end
