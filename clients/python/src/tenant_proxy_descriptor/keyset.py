"""Key sets that never stall the app (docs/descriptor.md, "Key sets").

One load at a time (single flight), in a background thread; the last good key set is served while
a refresh runs, after its max-age or on an unknown ``kid`` (at most once per cooldown); a failed
refresh keeps the last good set and is not retried before the cooldown. Only the very first load,
while no key set is held, makes a caller wait, bounded by the fetch timeout: a hanging or dead key
set server adds no latency to any request after the first successful load.
"""

from __future__ import annotations

import http.client
import re
import threading
import time
import urllib.parse
from typing import Any, Callable, Dict, Optional, Tuple, Union

#: Key set lifetime when the answer has no ``Cache-Control: max-age``, in seconds.
DEFAULT_MAX_AGE = 60.0
#: Minimum time between two loads caused by unknown kids, or after a failed load, in seconds.
DEFAULT_COOLDOWN = 30.0
#: Timeout of one key set fetch, in seconds.
DEFAULT_FETCH_TIMEOUT = 2.0
#: Largest key set accepted, in bytes.
MAX_JWKS_BYTES = 1 << 20

_MAX_AGE = re.compile(r"(?:^|[,\s])max-age=(\d{1,9})(?:$|[,\s])", re.IGNORECASE)

#: A fetch returns the body, or the body and the max-age its answer allowed (None: not said).
FetchResult = Union[bytes, Tuple[bytes, Optional[float]]]


class FetchError(Exception):
    """A key set fetch that failed: a network error, a non-2xx answer (a redirect too), a timeout."""


def http_get(url: str, timeout: float = DEFAULT_FETCH_TIMEOUT) -> Tuple[bytes, Optional[float]]:
    """GET with one deadline for the whole exchange, no redirects and a 1 MiB cap.

    A redirect is never followed (docs/descriptor.md): a key set URL that redirects is misconfigured
    or hijacked, so a 3xx is a failed fetch like any other non-2xx answer.
    """
    deadline = time.monotonic() + timeout
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise FetchError(f"not an http(s) URL: {parts.scheme}")
    conn_class = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    conn = conn_class(parts.hostname, parts.port, timeout=timeout)
    try:
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        conn.request("GET", path, headers={"Accept": "application/json"})
        res = conn.getresponse()
        if not 200 <= res.status <= 299:
            raise FetchError(f"HTTP {res.status}")
        chunks = []
        size = 0
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise FetchError(f"no complete answer within {timeout} s")
            # The per-read timeout shrinks to what is left: a server trickling a byte at a time
            # cannot hold the fetch open past the deadline.
            if conn.sock is not None:
                conn.sock.settimeout(remaining)
            chunk = res.read1(65536) if hasattr(res, "read1") else res.read(65536)
            if not chunk:
                break
            size += len(chunk)
            if size > MAX_JWKS_BYTES:
                raise FetchError("key set larger than 1 MiB")
            chunks.append(chunk)
        match = _MAX_AGE.search(res.getheader("Cache-Control") or "")
        return b"".join(chunks), float(match.group(1)) if match else None
    except OSError as err:  # refused, reset, timed out
        raise FetchError(f"{type(err).__name__}: {err}") from None
    except http.client.HTTPException as err:
        raise FetchError(f"{type(err).__name__}") from None
    finally:
        conn.close()


class RemoteKeySet:
    """A key set loaded by ``fetch`` (a URL, a file), parsed by ``parse``; see the module's doc."""

    def __init__(
        self,
        where: str,
        fetch: Callable[[], FetchResult],
        parse: Callable[[bytes], Dict[str, Any]],
        clock: Callable[[], float],
        max_age: Optional[float],
        cooldown: float,
        wait_timeout: float,
        on_error: Optional[Callable[[Exception], None]] = None,
    ) -> None:
        self._where = where
        self._fetch = fetch
        self._parse = parse
        self._clock = clock
        self._max_age = max_age
        self._cooldown = cooldown
        self._wait_timeout = wait_timeout
        self._on_error = on_error
        self._lock = threading.Lock()
        self._keys: Optional[Dict[str, Any]] = None
        self._stale_at = 0.0
        self._retry_at = 0.0
        self._last_attempt: Optional[float] = None
        self._inflight: Optional[threading.Event] = None
        self._last_error: Optional[str] = None
        #: Loads started, successful or not (for tests and metrics).
        self.fetches = 0

    @property
    def has_keys(self) -> bool:
        return self._keys is not None

    def get(self, kid: str) -> Optional[Any]:
        """The key for ``kid``, or None. Waits only while no key set was ever loaded."""
        keys = self._keys
        if keys is None:
            return self._first_load().get(kid)
        now = self._clock()
        key = keys.get(kid)
        with self._lock:
            if self._inflight is None and now >= self._retry_at:
                stale = now >= self._stale_at
                # An unknown kid may be the next key of a rotation: look again in the background,
                # at most once per cooldown. This token is refused now.
                unknown = key is None and (self._last_attempt is None or now - self._last_attempt >= self._cooldown)
                if stale or unknown:
                    self._start_locked(now)
        return key

    def prefetch(self) -> None:
        """Loads now when nothing is held yet; raises KeySetUnavailable when that fails."""
        if self._keys is None:
            self._first_load()

    def settled(self, timeout: Optional[float] = None) -> bool:
        """Waits until no load is in flight; False if ``timeout`` passed first."""
        event = self._inflight
        return True if event is None else event.wait(timeout)

    def _first_load(self) -> Dict[str, Any]:
        from .verifier import KeySetUnavailable  # noqa: PLC0415 - the error lives with the verifier

        with self._lock:
            event = self._inflight or self._start_locked(self._clock())
        # Bounded even if a custom fetch ignores its timeout.
        event.wait(self._wait_timeout)
        keys = self._keys
        if keys is None:
            raise KeySetUnavailable("jwks_unavailable", f"cannot load the key set from {self._where}: {self._last_error or 'no answer in time'}")
        return keys

    def _start_locked(self, now: float) -> threading.Event:
        event = threading.Event()
        self._inflight = event
        self._last_attempt = now
        self.fetches += 1
        # A daemon thread: a hanging fetch never keeps the process from exiting.
        threading.Thread(target=self._load, args=(event,), name="tenant-proxy-key-set", daemon=True).start()
        return event

    def _load(self, event: threading.Event) -> None:
        started = self._clock()
        try:
            result = self._fetch()
            body, served_max_age = result if isinstance(result, tuple) else (result, None)
            keys = self._parse(body)
            # Bounded both ways: max-age=0 must not mean a fetch per request, nor a huge value never.
            age = self._max_age if self._max_age is not None else min(max(served_max_age if served_max_age is not None else DEFAULT_MAX_AGE, 1.0), 3600.0)
            with self._lock:
                self._keys = keys
                self._stale_at = started + age
                self._last_error = None
        except Exception as err:  # noqa: BLE001 - any failure keeps the last good key set
            with self._lock:
                # Leave a failing server alone for the cooldown, counted from the failure: a fetch
                # that hung until its timeout is not retried the moment it gives up.
                self._retry_at = self._clock() + self._cooldown
                self._last_error = str(err) or type(err).__name__
            if self._on_error is not None:
                try:
                    self._on_error(err)
                except Exception:  # noqa: BLE001 - a logging callback must not break the key set
                    pass
        finally:
            with self._lock:
                self._inflight = None
            event.set()
