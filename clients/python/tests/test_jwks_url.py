"""The key set: cached for its max-age and refreshed in the background (the last good set served
meanwhile), one load at a time, unknown kids refused at once and refetched at most once per
cooldown, failures left alone for the cooldown, no redirects. Against an in-memory fetch, then
against a real TCP key set server that serves, hangs (accepts and never answers) and dies."""

import asyncio
import json
import threading
import unittest

from keyset_server import KeySetServer, sign, until
from support import VECTORS, case, fixture_verifier

from tenant_proxy_descriptor import ASGIMiddleware, ConfigurationError, InvalidDescriptor, KeySetUnavailable, Verifier

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
        self.verifier = fixture_verifier(jwks=None, secrets=None, jwks_url=URL, fetch=self.server, clock=lambda: self.now, jwks_cooldown=30, jwks_max_age=10)

    def verify(self, name):
        return self.verifier.verify(case(name)["token"], case(name)["request_host"])

    def reason(self, name):
        with self.assertRaises(InvalidDescriptor) as ctx:
            self.verify(name)
        return ctx.exception.reason

    def test_fetches_once_and_caches(self):
        self.verify("valid ES256")
        self.verify("valid ES256")
        self.assertEqual(self.server.urls, [URL])

    def test_unknown_kid_is_refused_at_once_and_refetched_at_most_once_per_cooldown(self):
        self.verify("valid ES256")  # first fetch at now
        self.server.keys = self.server.keys + [self.rotated]  # the proxy publishes the next key
        self.now += 5
        self.assertEqual(self.reason(ROTATED), "unknown_kid")
        self.assertEqual(self.verifier.jwks_fetches, 1, "within the cooldown of the first fetch: no refetch")
        self.now += 25  # 30 s after the last fetch, still within the max-age... of a longer-lived set
        self.verifier = self.verifier  # same verifier
        self.assertEqual(self.reason(ROTATED), "unknown_kid", "refused now, never waiting for a fetch")
        self.assertEqual(self.verifier.jwks_fetches, 2, "one refetch in the background")
        self.assertTrue(self.verifier.settled(5))
        self.assertEqual(self.verify(ROTATED).tenant, "acme", "the new key is known once the refetch is in")
        self.assertEqual(self.verifier.jwks_fetches, 2)

    def test_forged_kids_cannot_hammer_the_proxy(self):
        self.verify("valid ES256")
        for _ in range(50):
            self.assertEqual(self.reason("unknown kid (signed by a key nobody trusts)"), "unknown_kid")
        self.assertEqual(self.verifier.jwks_fetches, 1)
        self.now += 5  # within the max-age and the cooldown
        self.reason("unknown kid (signed by a key nobody trusts)")
        self.assertEqual(self.verifier.jwks_fetches, 1)

    def test_refreshes_after_max_age_in_the_background_and_drops_retired_keys(self):
        self.server.keys = VECTORS["jwks"]["keys"]
        self.verify(ROTATED)
        self.server.keys = [self.rotated]  # the old key is retired
        self.now += 11  # past max-age 10 s
        self.assertEqual(self.verify("valid ES256").tenant, "acme", "the stale key set still answers at once")
        self.assertEqual(self.verifier.jwks_fetches, 2, "and a refresh started")
        self.assertTrue(self.verifier.settled(5))
        self.assertEqual(self.reason("valid ES256"), "unknown_kid", "once refreshed, the retired key is gone")

    def test_unavailable_key_set(self):
        self.server.fail = True
        with self.assertRaises(KeySetUnavailable) as ctx:
            self.verify("valid ES256")
        self.assertEqual((ctx.exception.reason, ctx.exception.status), ("jwks_unavailable", 503))
        self.assertNotIn("tenant-proxy.invalid:9394/.well-known", str(ctx.exception).split("from ")[0])

    def test_stale_keys_are_kept_when_a_refetch_fails(self):
        errors = []
        verifier = fixture_verifier(jwks=None, secrets=None, jwks_url=URL, fetch=self.server, clock=lambda: self.now, jwks_max_age=10, on_key_set_error=errors.append)
        token = case("valid ES256")["token"]
        verifier.verify(token, VECTORS["host"])
        self.server.fail = True
        self.now += 11  # past max age: the refetch fails, the cached keys still verify
        self.assertEqual(verifier.verify(token, VECTORS["host"]).tenant, "acme")
        self.assertTrue(verifier.settled(5))
        self.assertEqual(len(errors), 1, "the failure is reported to on_key_set_error")
        self.assertEqual(verifier.verify(token, VECTORS["host"]).tenant, "acme")
        self.assertEqual(verifier.jwks_fetches, 2, "a failed refresh is not retried before the cooldown")


class HangingServerTest(unittest.TestCase):
    """A real key set server that hangs, then dies: after the first fetch, no request waits."""

    def setUp(self):
        self.server = KeySetServer()
        self.addCleanup(self.server.kill)
        self.now = float(VECTORS["now"])
        self.errors = []
        # The fetch timeout is far beyond the test: a request that waited for the hang could not finish in time.
        self.verifier = Verifier(jwks_url=self.server.url, issuer=VECTORS["issuer"], audience=VECTORS["audience"],
                                 clock=lambda: self.now, fetch_timeout=60, on_key_set_error=self.errors.append)

    def test_hanging_then_dead_server_adds_no_latency(self):
        good = sign(self.now)
        forged = sign(self.now, key="attacker")
        self.assertEqual(self.verifier.verify(good, VECTORS["host"]).tenant, "acme", "first request: the one wait allowed")
        self.assertEqual(self.server.answered, 1)

        self.server.mode = "hang"
        self.now += 61  # past the served max-age (60 s)
        results = []
        barrier = threading.Barrier(8)

        def request():
            barrier.wait(5)
            results.append(self.verifier.verify(good, VECTORS["host"]).tenant)

        threads = [threading.Thread(target=request) for _ in range(8)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(10)
        self.assertEqual(results, ["acme"] * 8, "8 concurrent requests with a stale key set all verified")
        until(lambda: len(self.server.hanging) == 1, "the refresh to reach the hanging server")
        self.assertFalse(self.verifier.settled(0), "they all completed while the refresh was still pending")
        self.assertEqual(self.server.connections, 2, "one fetch in flight for all of them (single flight)")

        self.now += 31  # past the cooldown: unknown kids while the refresh hangs
        for _ in range(10):
            with self.assertRaises(InvalidDescriptor) as ctx:
                self.verifier.verify(forged, VECTORS["host"])
            self.assertEqual(ctx.exception.reason, "unknown_kid")
        self.assertEqual(self.server.connections, 2, "still one fetch in flight")

        self.server.release()  # the hanging fetch fails (connection reset)
        self.assertTrue(self.verifier.settled(5))
        self.assertEqual(len(self.errors), 1)
        self.assertEqual(self.verifier.verify(good, VECTORS["host"]).tenant, "acme", "the last good key set still verifies")
        self.assertEqual(self.verifier.jwks_fetches, 2, "a failed refresh is not retried before the cooldown")

        self.now += 30
        for _ in range(20):
            with self.assertRaises(InvalidDescriptor):
                self.verifier.verify(forged, VECTORS["host"])
        self.assertEqual(self.verifier.jwks_fetches, 3, "cooldown passed: one refresh for 20 unknown kids")
        until(lambda: len(self.server.hanging) == 1, "the refresh to reach the hanging server")
        self.server.release()
        self.assertTrue(self.verifier.settled(5))
        self.now += 10
        for _ in range(20):
            with self.assertRaises(InvalidDescriptor):
                self.verifier.verify(forged, VECTORS["host"])
        self.assertEqual(self.verifier.jwks_fetches, 3, "within the cooldown: no refresh, however many unknown kids")
        self.assertEqual(self.server.connections, 3)

        self.server.kill()  # connection refused from now on
        self.now += 30
        self.assertEqual(self.verifier.verify(good, VECTORS["host"]).tenant, "acme", "dead server: the last good key set")
        self.assertEqual(self.verifier.jwks_fetches, 4)
        self.assertTrue(self.verifier.settled(5))
        self.assertIn("ConnectionRefused", str(self.errors[-1]))

    def test_first_fetch_waits_at_most_the_timeout_and_is_shared(self):
        self.server.mode = "hang"
        verifier = Verifier(jwks_url=self.server.url, issuer=VECTORS["issuer"], audience=VECTORS["audience"], clock=lambda: self.now, fetch_timeout=0.3)
        outcomes = []

        def request():
            try:
                verifier.verify(sign(self.now), VECTORS["host"])
                outcomes.append("ok")
            except KeySetUnavailable as err:
                outcomes.append(err.reason)

        threads = [threading.Thread(target=request) for _ in range(5)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(10)
        self.assertEqual(outcomes, ["jwks_unavailable"] * 5, "nothing held and the server hangs: 503 after the timeout")
        self.assertEqual(self.server.connections, 1, "five waiting requests shared one fetch")
        self.server.mode = "serve"
        self.assertEqual(verifier.verify(sign(self.now), VECTORS["host"]).tenant, "acme", "with nothing held, the next request tries again")

    def test_redirects_are_not_followed(self):
        target = KeySetServer()
        self.addCleanup(target.kill)
        self.server.mode = "redirect"
        self.server.location = target.url
        with self.assertRaises(KeySetUnavailable) as ctx:
            self.verifier.verify(sign(self.now), VECTORS["host"])
        self.assertIn("HTTP 302", str(ctx.exception))
        self.assertEqual(target.connections, 0, "the redirect target was never asked")

    def test_asgi_event_loop_keeps_running_during_the_first_fetch(self):
        self.server.mode = "hang"
        # Short enough that a blocked loop would see the request finished (503) by the time it runs again.
        verifier = Verifier(jwks_url=self.server.url, issuer=VECTORS["issuer"], audience=VECTORS["audience"], clock=lambda: self.now, fetch_timeout=3)
        sent = []

        async def inner(scope, receive, send):
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": scope["tenant_proxy.descriptor"].tenant.encode()})

        async def send(message):
            sent.append(message)

        async def receive():
            return {"type": "http.request", "body": b"", "more_body": False}

        app = ASGIMiddleware(inner, verifier)
        scope = {"type": "http", "path": "/orders", "headers": [(b"host", VECTORS["host"].encode()), (b"x-tenant-descriptor", sign(self.now).encode())]}

        async def main():
            request = asyncio.ensure_future(app(scope, receive, send))
            ticks = 0
            # Another coroutine runs on the same loop while the first fetch hangs.
            while not self.server.hanging:
                ticks += 1
                self.assertLess(ticks, 10_000)
                await asyncio.sleep(0.001)
            self.assertFalse(request.done(), "the request is still waiting for its key set, off the loop")
            for _ in range(3):
                ticks += 1
                await asyncio.sleep(0)
            self.server.answer_hanging()
            await asyncio.wait_for(request, 10)
            return ticks

        ticks = asyncio.run(main())
        self.assertGreater(ticks, 0)
        self.assertEqual((sent[0]["status"], sent[1]["body"]), (200, b"acme"), "the request completes once the key set arrives")


class FromEnvTest(unittest.TestCase):
    def test_settings_are_read_at_first_use(self):
        env = {}
        verifier = Verifier.from_env(env)
        self.assertEqual(verifier.jwks_fetches, 0, "created without any setting (manage.py, a build step)")
        with self.assertRaises(ConfigurationError) as ctx:
            verifier.verify(sign(VECTORS["now"]), VECTORS["host"])
        self.assertIn("TENANT_DESCRIPTOR_ISSUER, TENANT_DESCRIPTOR_AUDIENCE, TENANT_DESCRIPTOR_JWKS_URL (or TENANT_DESCRIPTOR_KEYS_FILE) are not set", str(ctx.exception))
        server = KeySetServer()
        self.addCleanup(server.kill)
        late = Verifier.from_env(env, clock=lambda: VECTORS["now"])
        env.update(TENANT_DESCRIPTOR_ISSUER=VECTORS["issuer"], TENANT_DESCRIPTOR_AUDIENCE=VECTORS["audience"], TENANT_DESCRIPTOR_JWKS_URL=server.url)
        late.prefetch()
        self.assertEqual(server.answered, 1)
        self.assertEqual(late.verify(sign(VECTORS["now"]), VECTORS["host"]).tenant, "acme")

    def test_proxy_names_are_never_read(self):
        verifier = Verifier.from_env({"TENANT_PROXY_ISSUER": "x", "TENANT_PROXY_AUDIENCE": "y", "TENANT_PROXY_JWKS_URL": "http://127.0.0.1:9/"})
        with self.assertRaises(ConfigurationError):
            verifier.prefetch()

    def test_keys_file(self):
        import os
        import tempfile

        with tempfile.TemporaryDirectory() as d:
            pem = os.path.join(d, "descriptor-public.pem")
            with open(pem, "w") as f:
                f.write("# the proxy's public key\n" + VECTORS["keys"]["es256"]["public_pem"])
            verifier = Verifier.from_env({"TENANT_DESCRIPTOR_ISSUER": VECTORS["issuer"], "TENANT_DESCRIPTOR_AUDIENCE": VECTORS["audience"], "TENANT_DESCRIPTOR_KEYS_FILE": pem}, clock=lambda: VECTORS["now"])
            self.assertEqual(verifier.verify(case("valid ES256")["token"], VECTORS["host"]).tenant, "acme", "a PEM key file; kid = the key's thumbprint, as the proxy's")
            secret = os.path.join(d, "hs256.txt")
            with open(secret, "w") as f:
                f.write("hs256:" + VECTORS["keys"]["hs256"]["secret"] + "\n")
            hs = Verifier(keys_file=secret, issuer=VECTORS["issuer"], audience=VECTORS["audience"], clock=lambda: VECTORS["now"])
            self.assertEqual(hs.verify(case("valid HS256")["token"], VECTORS["host"]).tenant, "acme")


if __name__ == "__main__":
    unittest.main()
