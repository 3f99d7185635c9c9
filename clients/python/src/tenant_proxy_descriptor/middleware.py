"""WSGI and ASGI middleware: verify the descriptor of every request, answer 400/401 JSON when it is
missing or invalid, and hand the verified :class:`Descriptor` to the app."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, Awaitable, Callable, Dict, Iterable, List, MutableMapping, Optional, Tuple, Union

from .verifier import Descriptor, DescriptorError, EnvVerifier, InvalidDescriptor, Verifier

#: Where the WSGI middleware puts the descriptor (``environ[ENVIRON_KEY]``) and the ASGI one
#: (``scope[ENVIRON_KEY]``, and ``scope["state"]["tenant_descriptor"]`` for Starlette's ``request.state``).
ENVIRON_KEY = "tenant_proxy.descriptor"
STATE_KEY = "tenant_descriptor"
DEFAULT_HEADER = "X-Tenant-Descriptor"

log = logging.getLogger("tenant_proxy_descriptor")

_MESSAGES = {
    400: "tenant descriptor missing or malformed",
    401: "tenant descriptor rejected",
    503: "tenant descriptor keys unavailable",
}


def _refusal(err: DescriptorError) -> Tuple[int, bytes]:
    # The reason code only: never the token, never key material.
    log.info("tenant descriptor refused: %s", err.reason)
    body = json.dumps({"error": _MESSAGES[err.status], "reason": err.reason}).encode("utf-8")
    return err.status, body


_STATUS_LINES = {400: "400 Bad Request", 401: "401 Unauthorized", 503: "503 Service Unavailable"}


class WSGIMiddleware:
    """``app = WSGIMiddleware(app, verifier, skip_paths=("/up",))``; the app reads
    ``environ["tenant_proxy.descriptor"]``. ``host`` picks the request host from the environ
    (default: the Host header, as Flask and Django without ``USE_X_FORWARDED_HOST`` use it)."""

    def __init__(
        self,
        app: Callable[..., Iterable[bytes]],
        verifier: Union[Verifier, EnvVerifier],
        *,
        header: str = DEFAULT_HEADER,
        skip_paths: Iterable[str] = ("/up",),
        host: Optional[Callable[[Dict[str, Any]], str]] = None,
    ) -> None:
        self.app = app
        self.verifier = verifier
        self.environ_header = "HTTP_" + header.upper().replace("-", "_")
        self.skip_paths = frozenset(skip_paths)
        self.host = host or _wsgi_host

    def __call__(self, environ: Dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO", "") in self.skip_paths:
            return self.app(environ, start_response)
        try:
            descriptor = self.verifier.verify(environ.get(self.environ_header), self.host(environ))
        except DescriptorError as err:
            status, body = _refusal(err)
            start_response(_STATUS_LINES[status], [("Content-Type", "application/json"), ("Content-Length", str(len(body))), ("Cache-Control", "no-store")])
            return [body]
        environ[ENVIRON_KEY] = descriptor
        return self.app(environ, start_response)


def _wsgi_host(environ: Dict[str, Any]) -> str:
    # PEP 3333 URL reconstruction: HTTP_HOST, else SERVER_NAME.
    return environ.get("HTTP_HOST") or environ.get("SERVER_NAME", "")


Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Dict[str, Any]]]
Send = Callable[[Dict[str, Any]], Awaitable[None]]


class ASGIMiddleware:
    """``app = ASGIMiddleware(app, verifier)`` for HTTP and WebSocket scopes; the app reads
    ``scope["tenant_proxy.descriptor"]`` or, with Starlette/FastAPI, ``request.state.tenant_descriptor``.

    The event loop is never blocked by the key set: refreshes run in a background thread, and the
    one wait there is (the very first fetch, while no key set is held) runs in the loop's default
    executor, so other requests and coroutines go on meanwhile."""

    def __init__(
        self,
        app: Callable[[Scope, Receive, Send], Awaitable[None]],
        verifier: Union[Verifier, EnvVerifier],
        *,
        header: str = DEFAULT_HEADER,
        skip_paths: Iterable[str] = ("/up",),
        host: Optional[Callable[[Scope], str]] = None,
    ) -> None:
        self.app = app
        self.verifier = verifier
        self.header = header.lower().encode("latin-1")
        self.skip_paths = frozenset(skip_paths)
        self.host = host or _asgi_host

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or scope.get("path", "") in self.skip_paths:
            await self.app(scope, receive, send)
            return
        values: List[bytes] = [v for k, v in scope.get("headers", []) if k.lower() == self.header]
        # ASGI keeps repeated headers apart; join them as HTTP/1.1 intermediaries do, so a duplicate
        # is refused like a comma-joined value.
        token = b", ".join(values).decode("latin-1") if values else None
        host = self.host(scope)
        try:
            if self.verifier.has_keys:
                # Verification is CPU work of well under a millisecond; with keys held it never waits.
                descriptor: Descriptor = self.verifier.verify(token, host)
            else:
                # No key set yet: the first fetch may wait up to its timeout, so not on the loop.
                descriptor = await asyncio.get_running_loop().run_in_executor(None, self.verifier.verify, token, host)
        except DescriptorError as err:
            status, body = _refusal(err)
            if scope["type"] == "websocket":
                # Closing before accepting makes the server answer the handshake with 403.
                await send({"type": "websocket.close", "code": 1008})
                return
            await send({
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), (b"cache-control", b"no-store")],
            })
            await send({"type": "http.response.body", "body": body})
            return
        scope = dict(scope)
        # A copy: the lifespan state is shared by every request and must not be written to.
        scope["state"] = {**(scope.get("state") or {}), STATE_KEY: descriptor}
        scope[ENVIRON_KEY] = descriptor
        await self.app(scope, receive, send)


def _asgi_host(scope: Scope) -> str:
    for k, v in scope.get("headers", []):
        if k.lower() == b"host":
            return v.decode("latin-1")
    server = scope.get("server")
    return server[0] if server else ""


__all__ = ["ASGIMiddleware", "WSGIMiddleware", "ENVIRON_KEY", "STATE_KEY", "InvalidDescriptor"]
