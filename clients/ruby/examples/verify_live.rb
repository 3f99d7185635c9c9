# frozen_string_literal: true

# Verify one descriptor against a running proxy's key set and print the tenant's database.
#
#   TENANT_DESCRIPTOR=<token> ruby examples/verify_live.rb \
#     --jwks-url http://127.0.0.1:9394/.well-known/tenant-proxy/jwks.json \
#     --issuer shop-production --audience shop --host acme.example.com
#
# Prints "tenant=acme db=acme_prod db_host=... db_port=5432 epoch=1" and exits 0, or prints
# "refused reason=<code>" and exits 1. The token is read from the environment, never from argv
# (where ps would show it).

$LOAD_PATH.unshift(File.expand_path("../lib", __dir__))
require "optparse"
require "tenant_proxy/descriptor"

options = {}
OptionParser.new do |o|
  o.on("--jwks-url URL") { |v| options[:jwks_url] = v }
  o.on("--issuer ISSUER") { |v| options[:issuer] = v }
  o.on("--audience AUDIENCE") { |v| options[:audience] = v }
  o.on("--host HOST", "the request host the token is presented for") { |v| options[:host] = v }
end.parse!
missing = %i[jwks_url issuer audience host].reject { |k| options[k] }
abort "missing #{missing.map { |k| "--#{k.to_s.tr('_', '-')}" }.join(', ')}" unless missing.empty?

verifier = TenantProxy::Descriptor::Verifier.new(jwks_url: options[:jwks_url], issuer: options[:issuer], audience: options[:audience])
begin
  d = verifier.verify(ENV["TENANT_DESCRIPTOR"], request_host: options[:host])
rescue TenantProxy::Descriptor::Error => e
  puts "refused reason=#{e.reason}"
  exit 1
end
puts "tenant=#{d.tenant} db=#{d.db.name} db_host=#{d.db.host} db_port=#{d.db.port} epoch=#{d.epoch}"
