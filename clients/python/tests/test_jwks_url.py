"""The JWKS URL cache: one fetch, refetch after max age, and on an unknown kid at most once per cooldown."""

import json
import unittest

from support import VECTORS, case, fixture_verifier

from tenant_proxy_descriptor import InvalidDescriptor, KeySetUnavailable

URL = "http://tenant-proxy.invalid:9394/.well-known/tenant-proxy/jwks.json"
ROTATED = "valid ES256 signed by the rotated key (both keys are in the JWKS during the overlap)"


class FakeKeySet:
    """Serves a JWKS from memory; ``keys`` can change between calls (a rotation)."""

    def __init__(self, keys):
        self.keys = keys
        self.urls = []
        self.fail = False

    def __call__(self, url):
        self.urls.append(url)
        if self.fail:
            raise OSError("connection refused")
        return json.dumps({"keys": self.keys}).encode()


class JwksUrlTest(unittest.TestCase):
    def setUp(self):
        self.now = VECTORS["now"]
        primary, rotated = VECTORS["jwks"]["keys"]
        self.rotated = rotated
        self.server = FakeKeySet([primary])
        self.verifier = fixture_verifier(jwks=None, secrets=None, jwks_url=URL, fetch=self.server, clock=lambda: self.now, jwks_cooldown=30, jwks_max_age=60)

    def verify(self, name):
        return self.verifier.verify(case(name)["token"], case(name)["request_host"])

    def test_fetches_once_and_caches(self):
        self.verify("valid ES256")
        self.verify("valid ES256")
        self.assertEqual(self.server.urls, [URL])

    def test_unknown_kid_refetches_at_most_once_per_cooldown(self):
        self.verify("valid ES256")  # first fetch at now
        self.server.keys = self.server.keys + [self.rotated]  # the proxy publishes the next key
        self.now += 10
        with self.assertRaises(InvalidDescriptor) as ctx:
            self.verify(ROTATED)  # within the cooldown of the first fetch: no refetch
        self.assertEqual(ctx.exception.reason, "unknown_kid")
        self.assertEqual(self.verifier.jwks_fetches, 1)
        self.now += 20  # 30 s after the last fetch
        self.assertEqual(self.verify(ROTATED).tenant, "acme")
        self.assertEqual(self.verifier.jwks_fetches, 2)

    def test_forged_kids_cannot_hammer_the_proxy(self):
        self.verify("valid ES256")
        for _ in range(50):
            with self.assertRaises(InvalidDescriptor):
                self.verify("unknown kid (signed by a key nobody trusts)")
        self.assertEqual(self.verifier.jwks_fetches, 1)
        self.now += 30
        with self.assertRaises(InvalidDescriptor):
            self.verify("unknown kid (signed by a key nobody trusts)")
        with self.assertRaises(InvalidDescriptor):
            self.verify("unknown kid (signed by a key nobody trusts)")
        self.assertEqual(self.verifier.jwks_fetches, 2)

    def test_refetches_after_max_age_and_drops_retired_keys(self):
        self.server.keys = VECTORS["jwks"]["keys"]
        self.verify(ROTATED)
        self.server.keys = [self.rotated]  # the old key is retired
        self.now += 60
        with self.assertRaises(InvalidDescriptor) as ctx:
            self.verify("valid ES256")
        self.assertEqual(ctx.exception.reason, "unknown_kid")

    def test_unavailable_key_set(self):
        self.server.fail = True
        with self.assertRaises(KeySetUnavailable) as ctx:
            self.verify("valid ES256")
        self.assertEqual((ctx.exception.reason, ctx.exception.status), ("jwks_unavailable", 503))

    def test_stale_keys_are_kept_when_a_refetch_fails(self):
        verifier = fixture_verifier(jwks=None, secrets=None, jwks_url=URL, fetch=self.server, clock=lambda: self.now, jwks_max_age=10)
        token = case("valid ES256")["token"]
        verifier.verify(token, VECTORS["host"])
        self.server.fail = True
        self.now += 11  # past max age: the refetch fails, the cached keys still verify
        self.assertEqual(verifier.verify(token, VECTORS["host"]).tenant, "acme")
        self.assertEqual(verifier.jwks_fetches, 2)

if __name__ == "__main__":
    unittest.main()
