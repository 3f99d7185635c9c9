"""Every case of the shared test vectors, through Verifier."""

import dataclasses
import unittest

from support import VECTORS, case, fixture_verifier

from tenant_proxy_descriptor import InvalidDescriptor, Verifier, canonical_host, hs256_kid


class VectorsTest(unittest.TestCase):
    def test_every_case(self):
        verifier = fixture_verifier()
        self.assertGreater(len(VECTORS["cases"]), 40)
        for c in VECTORS["cases"]:
            with self.subTest(c["name"]):
                if c["expect"] == "valid":
                    d = verifier.verify(c["token"], c["request_host"])
                    claims = c["claims"]
                    self.assertEqual(d.tenant, claims["sub"])
                    self.assertEqual(d.host, claims["host"])
                    self.assertEqual((d.db.name, d.db.host, d.db.port), (claims["db"]["name"], claims["db"]["host"], claims["db"]["port"]))
                    self.assertEqual((d.epoch, d.issued_at, d.expires_at), (claims["epoch"], claims["iat"], claims["exp"]))
                else:
                    with self.assertRaises(InvalidDescriptor) as ctx:
                        verifier.verify(c["token"], c["request_host"])
                    self.assertEqual(ctx.exception.reason, c["reason"], str(ctx.exception))

    def test_descriptor_is_frozen(self):
        d = fixture_verifier().verify(case("valid ES256")["token"], VECTORS["host"])
        with self.assertRaises(dataclasses.FrozenInstanceError):
            d.tenant = "globex"
        self.assertEqual(d.connection_key, "db2.internal:5432/acme_prod")

    def test_clock_is_injected(self):
        token = case("valid ES256")["token"]
        later = fixture_verifier(clock=lambda: VECTORS["now"] + 3600)
        with self.assertRaises(InvalidDescriptor) as ctx:
            later.verify(token, VECTORS["host"])
        self.assertEqual(ctx.exception.reason, "expired")

    def test_keys_decide_the_algorithm(self):
        # With only the HS256 secret trusted, ES256 tokens have an unknown kid, and the other way round.
        hs_only = fixture_verifier(jwks=None)
        with self.assertRaises(InvalidDescriptor) as ctx:
            hs_only.verify(case("valid ES256")["token"], VECTORS["host"])
        self.assertEqual(ctx.exception.reason, "unknown_kid")
        es_only = fixture_verifier(secrets=None)
        with self.assertRaises(InvalidDescriptor) as ctx:
            es_only.verify(case("valid HS256")["token"], VECTORS["host"])
        self.assertEqual(ctx.exception.reason, "unknown_kid")

    def test_hs256_kid_is_the_proxy_thumbprint(self):
        self.assertEqual(hs256_kid(VECTORS["keys"]["hs256"]["secret"]), VECTORS["keys"]["hs256"]["kid"])

    def test_options_are_checked(self):
        with self.assertRaises(ValueError):
            fixture_verifier(leeway=6)
        with self.assertRaises(ValueError):
            fixture_verifier(secrets="too short")
        with self.assertRaises(ValueError):
            Verifier(issuer="i", audience="a")

    def test_missing_token(self):
        with self.assertRaises(InvalidDescriptor) as ctx:
            fixture_verifier().verify(None, VECTORS["host"])
        self.assertEqual((ctx.exception.reason, ctx.exception.status), ("missing", 400))

    def test_canonical_host(self):
        self.assertEqual(canonical_host("ACME.Example.COM.:8443"), "acme.example.com")
        self.assertEqual(canonical_host("acme.example.com"), "acme.example.com")
        self.assertIsNone(canonical_host("[::1]:8080"), "an IP literal has no canonical form: it matches no claim")
        self.assertEqual(canonical_host("BÜCHER.example:8443"), "xn--bcher-kva.example")


if __name__ == "__main__":
    unittest.main()
