# frozen_string_literal: true

# A note, stored in the database of the tenant in effect (db/tenant_migrate).
class Note < TenantRecord
  validates :title, presence: true
end
