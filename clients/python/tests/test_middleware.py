"""WSGI and ASGI middleware, called directly with a hand-built environ / scope."""

import asyncio
import json
import unittest

from support import VECTORS, case, fixture_verifier

from tenant_proxy_descriptor import ENVIRON_KEY, STATE_KEY, ASGIMiddleware, Descriptor, WSGIMiddleware

VALID = case("valid ES256")["token"]


def wsgi_app(environ, start_response):
    d = environ[ENVIRON_KEY]
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [f"{d.tenant} {d.db.name}".encode()]


def call_wsgi(app, path="/orders", host="acme.example.com", token=VALID):
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": path, "SERVER_NAME": "app", "SERVER_PORT": "3000", "wsgi.url_scheme": "http"}
    if host is not None:
        environ["HTTP_HOST"] = host
    if token is not None:
        environ["HTTP_X_TENANT_DESCRIPTOR"] = token
    seen = {}

    def start_response(status, headers):
        seen["status"], seen["headers"] = status, dict(headers)

    body = b"".join(app(environ, start_response))
    return seen["status"], seen["headers"], body, environ


class WSGITest(unittest.TestCase):
    def setUp(self):
        self.app = WSGIMiddleware(wsgi_app, fixture_verifier(), skip_paths=("/up",))

    def test_valid_descriptor_reaches_the_app(self):
        status, _, body, environ = call_wsgi(self.app, host="ACME.example.com:8080")
        self.assertEqual((status, body), ("200 OK", b"acme acme_prod"))
        self.assertIsInstance(environ[ENVIRON_KEY], Descriptor)

    def test_missing_is_400(self):
        status, headers, body, environ = call_wsgi(self.app, token=None)
        self.assertEqual(status, "400 Bad Request")
        self.assertEqual(headers["Content-Type"], "application/json")
        self.assertEqual(json.loads(body)["reason"], "missing")
        self.assertNotIn(ENVIRON_KEY, environ)

    def test_duplicated_header_is_400(self):
        status, _, body, _ = call_wsgi(self.app, token=case("two header values joined with a comma")["token"])
        self.assertEqual((status, json.loads(body)["reason"]), ("400 Bad Request", "comma"))

    def test_invalid_is_401_with_reason(self):
        for name in ("expired", "wrong aud (app A's token sent to app B)", "alg none", "tampered payload (sub and db changed, signature kept)"):
            with self.subTest(name):
                status, _, body, _ = call_wsgi(self.app, token=case(name)["token"])
                self.assertEqual((status, json.loads(body)["reason"]), ("401 Unauthorized", case(name)["reason"]))
                self.assertNotIn(case(name)["token"].encode(), body, "the token is never echoed")

    def test_other_tenants_host_is_401(self):
        status, _, body, _ = call_wsgi(self.app, host="globex.example.com")
        self.assertEqual((status, json.loads(body)["reason"]), ("401 Unauthorized", "host_mismatch"))

    def test_skip_paths(self):
        app = WSGIMiddleware(lambda e, s: (s("200 OK", []), [b"up"])[1], fixture_verifier())
        status, _, body, _ = call_wsgi(app, path="/up", token=None)
        self.assertEqual((status, body), ("200 OK", b"up"))

    def test_server_name_when_no_host_header(self):
        status, _, body, _ = call_wsgi(self.app, host=None)
        self.assertEqual((status, json.loads(body)["reason"]), ("401 Unauthorized", "host_mismatch"))


async def asgi_app(scope, receive, send):
    d = scope[ENVIRON_KEY]
    assert scope["state"][STATE_KEY] is d
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": f"{d.tenant} {d.db.name}".encode()})


def call_asgi(app, path="/orders", host=b"acme.example.com", tokens=(VALID,), scope_type="http", state=None):
    headers = [(b"host", host)] if host is not None else []
    headers += [(b"x-tenant-descriptor", t.encode()) for t in tokens]
    scope = {"type": scope_type, "path": path, "headers": headers, "server": ("app", 3000)}
    if state is not None:
        scope["state"] = state
    sent = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return sent, scope


class ASGITest(unittest.TestCase):
    def setUp(self):
        self.app = ASGIMiddleware(asgi_app, fixture_verifier())

    def test_valid_descriptor_reaches_the_app(self):
        lifespan_state = {"pool": "shared"}
        sent, scope = call_asgi(self.app, state=lifespan_state)
        self.assertEqual(sent[0]["status"], 200)
        self.assertEqual(sent[1]["body"], b"acme acme_prod")
        self.assertEqual(lifespan_state, {"pool": "shared"}, "the shared lifespan state is not written to")
        self.assertNotIn(ENVIRON_KEY, scope, "the caller's scope is not mutated")

    def test_missing_is_400(self):
        sent, _ = call_asgi(self.app, tokens=())
        self.assertEqual(sent[0]["status"], 400)
        self.assertEqual(json.loads(sent[1]["body"])["reason"], "missing")

    def test_two_header_fields_are_refused(self):
        sent, _ = call_asgi(self.app, tokens=(VALID, VALID))
        self.assertEqual((sent[0]["status"], json.loads(sent[1]["body"])["reason"]), (400, "comma"))

    def test_invalid_is_401(self):
        sent, _ = call_asgi(self.app, tokens=(case("HS256 signed with the ES256 public key (PEM) as the secret")["token"],))
        self.assertEqual((sent[0]["status"], json.loads(sent[1]["body"])["reason"]), (401, "alg"))
        self.assertIn((b"content-type", b"application/json"), sent[0]["headers"])

    def test_other_tenants_host_is_401(self):
        sent, _ = call_asgi(self.app, host=b"globex.example.com:443")
        self.assertEqual((sent[0]["status"], json.loads(sent[1]["body"])["reason"]), (401, "host_mismatch"))

    def test_websocket_is_closed_before_accept(self):
        sent, _ = call_asgi(self.app, tokens=(), scope_type="websocket")
        self.assertEqual(sent, [{"type": "websocket.close", "code": 1008}])

    def test_skip_paths_and_lifespan_pass_through(self):
        calls = []

        async def inner(scope, receive, send):
            calls.append(scope["type"])

        app = ASGIMiddleware(inner, fixture_verifier())
        call_asgi(app, path="/up", tokens=())
        call_asgi(app, tokens=(), scope_type="lifespan")
        self.assertEqual(calls, ["http", "lifespan"])


if __name__ == "__main__":
    unittest.main()
