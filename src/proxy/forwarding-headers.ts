/**
 * The forwarding headers: request headers through which web frameworks learn about the client
 * and the connection (address, scheme, host, port, path prefix, client certificate) instead of
 * from the socket. A client that sets one of them poses as a proxy, so the proxy drops every one
 * of them from untrusted peers and sets its own (src/proxy/headers.ts). The list is the union of
 * what Rack/Rails, Django, Express and Spring read, plus the common spellings of load balancers
 * and CDNs that libraries such as django-ipware, Symfony and Tomcat believe. docs/operations.md
 * ("Forwarding headers") prints the same list; a test keeps the two equal.
 */

/** Lower-case names, each with who reads it. */
export const FORWARDING_HEADERS = [
  // RFC 7239; Rack 3 reads it before X-Forwarded-* (Rack::Request.forwarded_priority), Spring's
  // ForwardedHeaderFilter too.
  'forwarded',
  // Client address: Rack, Rails (ActionDispatch::RemoteIp), Django apps, Express, Spring, Tomcat.
  'x-forwarded-for',
  // Host: Rack, Django (USE_X_FORWARDED_HOST), Express, Spring.
  'x-forwarded-host',
  // Scheme: Rack, Django (SECURE_PROXY_SSL_HEADER), Express, Spring, Tomcat.
  'x-forwarded-proto',
  // Port: Rack, Django (USE_X_FORWARDED_PORT), Spring, Tomcat.
  'x-forwarded-port',
  // "on" means https: Rack (checked first in Rack 2 and 3), Spring.
  'x-forwarded-ssl',
  // Scheme: Rack.
  'x-forwarded-scheme',
  // Scheme: Microsoft and Zend stacks.
  'x-forwarded-protocol',
  // Path prefix the app is mounted under: Spring, Traefik and ingress controllers.
  'x-forwarded-prefix',
  // Original path: Traefik, Spring Cloud Gateway.
  'x-forwarded-uri',
  // Proxy identity: Tomcat RemoteIpValve (proxiesHeader), Apache mod_proxy.
  'x-forwarded-by',
  'x-forwarded-server',
  // Client certificate a TLS-terminating hop vouches for: Envoy (XFCC), ingress-nginx, IIS ARR.
  'x-forwarded-client-cert',
  'x-client-cert',
  'x-ssl-client-cert',
  'x-arr-clientcert',
  // "on" means https: Microsoft (Outlook Web Access, IIS ARR), Symfony.
  'front-end-https',
  'x-arr-ssl',
  // Scheme: WebOb/Pyramid, Werkzeug's older ProxyFix.
  'x-url-scheme',
  // Client address: Rails (HTTP_CLIENT_IP), nginx's realip convention, CDNs; django-ipware and
  // many Go/Node middlewares read them all.
  'client-ip',
  'x-client-ip',
  'x-real-ip',
  'true-client-ip',
  'x-cluster-client-ip',
  'cf-connecting-ip',
  'fastly-client-ip',
  'x-original-forwarded-for',
  // Original host and URL: IIS URL Rewrite; Symfony and Zend once let them override the path
  // (CVE-2018-14773).
  'x-original-host',
  'x-original-url',
  'x-rewrite-url'
] as const

export type ForwardingHeader = typeof FORWARDING_HEADERS[number]

/** Set form for lookups by lower-case name. */
export const FORWARDING_HEADER_SET: ReadonlySet<string> = new Set(FORWARDING_HEADERS)
