"""Verification of tenant-proxy's descriptor (docs/descriptor.md, version 1) on top of PyJWT.

The checks run in the order of the specification; the first that fails raises
:class:`InvalidDescriptor` with a stable ``reason`` code (the codes of
test/fixtures/descriptor-vectors.json).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import os
import re
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, Mapping, Optional, Union

import jwt
from jwt.algorithms import ECAlgorithm

from . import keyset
from .host import canonical_host

TYP = "tenant-db+jwt"
#: Largest accepted token, in bytes; the proxy's tokens are well under 1 KiB.
MAX_TOKEN_BYTES = 8192
#: The specification allows at most this much clock skew, in seconds.
MAX_LEEWAY = 5
#: JOSE header parameters that would let a token name its own key, or demand extensions.
FORBIDDEN_HEADERS = ("crit", "jwk", "jku", "x5u", "x5c")
#: Reasons that describe a malformed request rather than a failed verification (HTTP 400).
BAD_REQUEST_REASONS = frozenset({"missing", "malformed", "comma", "too_large"})
#: The largest numeric claim: the largest integer every JSON parser holds exactly (2^53 - 1).
MAX_SAFE_INTEGER = 2**53 - 1

_B64URL = re.compile(r"^[A-Za-z0-9_-]+$")
_PEM_BLOCK = re.compile(r"-----BEGIN ([A-Z0-9 ]+)-----[\s\S]*?-----END \1-----")


class DescriptorError(Exception):
    """Base class: ``reason`` is a stable code, ``status`` the HTTP status a middleware answers."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail

    @property
    def status(self) -> int:
        if self.reason == "jwks_unavailable":
            return 503
        return 400 if self.reason in BAD_REQUEST_REASONS else 401


class InvalidDescriptor(DescriptorError):
    """The descriptor is missing, malformed, forged, expired, or for another app or host."""


class KeySetUnavailable(DescriptorError):
    """The JWKS URL could not be fetched and no keys are cached (reason ``jwks_unavailable``)."""


class ConfigurationError(ValueError):
    """The verifier's own settings are wrong or missing (a bug to fix, never a refusal: HTTP 500)."""


@dataclass(frozen=True)
class Database:
    name: str
    host: str
    port: int


@dataclass(frozen=True)
class Descriptor:
    """A verified descriptor: the tenant and its database."""

    tenant: str
    host: str
    db: Database
    epoch: int
    issuer: str
    audience: str
    issued_at: int
    expires_at: int

    @property
    def connection_key(self) -> str:
        """``host:port/name``: the key to cache one connection pool per tenant database under."""
        return f"{self.db.host}:{self.db.port}/{self.db.name}"


@dataclass(frozen=True)
class _Key:
    alg: str
    key: Any


def hs256_kid(secret: str) -> str:
    """RFC 7638 thumbprint of the secret's ``oct`` JWK: the kid tenant-proxy gives an HS256 key."""
    k = _b64encode(secret.encode("utf-8"))
    canonical = json.dumps({"k": k, "kty": "oct"}, separators=(",", ":"))
    return _b64encode(hashlib.sha256(canonical.encode("ascii")).digest())


def keys_from_jwks(jwks: Union[str, bytes, Mapping[str, Any]]) -> Dict[str, _Key]:
    """ES256 verification keys by kid from a JWKS (other keys, and keys for other uses, are skipped)."""
    data = json.loads(jwks) if isinstance(jwks, (str, bytes)) else jwks
    keys = data.get("keys") if isinstance(data, Mapping) else None
    if not isinstance(keys, list):
        raise ValueError('JWKS has no "keys" list')
    out: Dict[str, _Key] = {}
    for jwk in keys:
        if not isinstance(jwk, Mapping) or jwk.get("kty") != "EC" or jwk.get("crv") != "P-256":
            continue
        if not isinstance(jwk.get("kid"), str) or jwk.get("use", "sig") != "sig" or jwk.get("alg", "ES256") != "ES256":
            continue
        if jwk["kid"] in out:
            raise ValueError(f"JWKS has a duplicate kid {jwk['kid']!r}")
        public = {name: jwk[name] for name in ("kty", "crv", "x", "y") if name in jwk}
        out[jwk["kid"]] = _Key("ES256", ECAlgorithm.from_jwk(public))
    return out


def keys_from_secrets(secrets: Union[str, Iterable[str], Mapping[str, str]]) -> Dict[str, _Key]:
    """HS256 keys by kid: a secret, a list of secrets (kid = thumbprint), or ``{kid: secret}``."""
    if isinstance(secrets, str):
        secrets = [secrets]
    pairs = secrets.items() if isinstance(secrets, Mapping) else ((hs256_kid(s), s) for s in secrets)
    out: Dict[str, _Key] = {}
    for kid, secret in pairs:
        if len(secret.encode("utf-8")) < 32:
            raise ValueError("HS256 secrets must be at least 32 bytes")
        # The UTF-8 bytes of the string are the HMAC key, as tenant-proxy uses them.
        out[kid] = _Key("HS256", secret)
    return out


def keys_from_pem(pem: str) -> Dict[str, _Key]:
    """ES256 keys by kid (the RFC 7638 thumbprint, as tenant-proxy's) from PEM blocks, public or private."""
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415 - PyJWT[crypto] brings it
    from cryptography.hazmat.primitives.asymmetric import ec  # noqa: PLC0415

    blocks = [m.group(0) for m in _PEM_BLOCK.finditer(pem) if m.group(1) != "EC PARAMETERS"]
    if not blocks:
        raise ValueError("no PEM key found")
    out: Dict[str, _Key] = {}
    for block in blocks:
        data = block.encode("ascii")
        try:
            key = serialization.load_pem_private_key(data, password=None).public_key() if "PRIVATE KEY" in block else serialization.load_pem_public_key(data)
        except (ValueError, TypeError):
            raise ValueError("not a readable PEM key (an EC P-256 public or private key)") from None
        if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
            raise ValueError("ES256 needs an EC P-256 key")
        numbers = key.public_numbers()
        jwk = {"crv": "P-256", "kty": "EC", "x": _b64encode(numbers.x.to_bytes(32, "big")), "y": _b64encode(numbers.y.to_bytes(32, "big"))}
        kid = _b64encode(hashlib.sha256(json.dumps(jwk, separators=(",", ":"), sort_keys=True).encode("ascii")).digest())
        out[kid] = _Key("ES256", key)
    return out


def keys_from_text(text: Union[str, bytes]) -> Dict[str, _Key]:
    """Keys from a key file (``TENANT_DESCRIPTOR_KEYS_FILE``): a JWKS, PEM blocks, or one ``hs256:<secret>`` line."""
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    stripped = text.strip()
    if stripped.startswith("{"):
        return keys_from_jwks(stripped)
    lines = [line.strip() for line in stripped.splitlines() if line.strip() and not line.strip().startswith("#")]
    if lines and lines[0].lower().startswith("hs256:"):
        if len(lines) > 1:
            raise ValueError("an hs256: secret is one line")
        return keys_from_secrets(lines[0][len("hs256:"):].strip())
    # Never an HMAC secret because it is not a PEM: a damaged private key must not become one.
    return keys_from_pem(stripped)


class Verifier:
    """Verifies descriptors for one app.

    :param jwks: a JWKS (dict or JSON text) with the proxy's ES256 public keys.
    :param jwks_url: the proxy's key set, e.g. ``http://tenant-proxy:9394/.well-known/tenant-proxy/jwks.json``.
    :param keys_file: a key file instead: a JWKS, PEM blocks or one ``hs256:<secret>`` line.
    :param secrets: HS256 secret(s), for proxies configured with HS256.
    :param issuer: the proxy's ``deploymentId``; :param audience: this app's ``descriptor.audience``.
    :param leeway: clock skew allowed on ``exp`` and ``nbf``, 0 to 5 seconds.
    :param clock: returns the current time in seconds (tests inject a fixed one).
    :param jwks_max_age: key set lifetime in seconds (default: the answer's ``Cache-Control`` max-age, else 60).
    :param jwks_cooldown: minimum seconds between two loads caused by unknown kids or after a failure (30).
    :param fetch_timeout: timeout of one key set fetch, in seconds (2).
    :param fetch: replaces the HTTP GET of ``jwks_url`` (``fetch(url)`` returns the body, or the body and a max-age).
    :param on_key_set_error: hears key set loads that failed in the background (the last good set was kept).
    """

    def __init__(
        self,
        *,
        issuer: str,
        audience: str,
        jwks: Union[str, bytes, Mapping[str, Any], None] = None,
        jwks_url: Optional[str] = None,
        keys_file: Optional[str] = None,
        secrets: Union[str, Iterable[str], Mapping[str, str], None] = None,
        leeway: float = 5,
        clock: Callable[[], float] = time.time,
        jwks_max_age: Optional[float] = None,
        jwks_cooldown: float = keyset.DEFAULT_COOLDOWN,
        fetch_timeout: float = keyset.DEFAULT_FETCH_TIMEOUT,
        fetch: Optional[Callable[[str], keyset.FetchResult]] = None,
        on_key_set_error: Optional[Callable[[Exception], None]] = None,
    ) -> None:
        if not issuer or not audience:
            raise ConfigurationError("issuer and audience are required")
        if not 0 <= leeway <= MAX_LEEWAY:
            raise ConfigurationError(f"leeway must be between 0 and {MAX_LEEWAY} seconds")
        if jwks is None and jwks_url is None and keys_file is None and secrets is None:
            raise ConfigurationError("give jwks, jwks_url, keys_file or secrets")
        if jwks_url is not None and keys_file is not None:
            raise ConfigurationError("give jwks_url or keys_file, not both")
        if not fetch_timeout > 0:
            raise ConfigurationError("fetch_timeout must be more than 0")
        self.issuer = issuer
        self.audience = audience
        self.leeway = leeway
        self._clock = clock
        self._static: Dict[str, _Key] = {}
        if jwks is not None:
            self._static.update(keys_from_jwks(jwks))
        if secrets is not None:
            self._static.update(keys_from_secrets(secrets))
        self._remote: Optional[keyset.RemoteKeySet] = None
        common = dict(clock=clock, max_age=jwks_max_age, cooldown=jwks_cooldown, wait_timeout=fetch_timeout + 1.0, on_error=on_key_set_error)
        if jwks_url is not None:
            url = jwks_url
            if _scheme(url) not in ("http", "https"):
                raise ConfigurationError("jwks_url must be an http(s) URL")
            get = fetch if fetch is not None else (lambda u: keyset.http_get(u, fetch_timeout))
            self._remote = keyset.RemoteKeySet(_describe_url(url), lambda: get(url), keys_from_jwks, **common)  # type: ignore[arg-type]
        elif keys_file is not None:
            path = keys_file

            def read() -> bytes:
                with open(path, "rb") as f:
                    return f.read(keyset.MAX_JWKS_BYTES)

            self._remote = keyset.RemoteKeySet(path, read, keys_from_text, **common)  # type: ignore[arg-type]

    @classmethod
    def from_env(cls, environ: Optional[Mapping[str, str]] = None, **options: Any) -> "EnvVerifier":
        """A verifier configured from ``TENANT_DESCRIPTOR_*``, read at first use (see :class:`EnvVerifier`)."""
        return EnvVerifier(environ, **options)

    @property
    def jwks_fetches(self) -> int:
        """How many times the key set (URL or file) was loaded, successfully or not."""
        return self._remote.fetches if self._remote else 0

    @property
    def has_keys(self) -> bool:
        """True when verifying needs no wait: keys given inline, or a key set already loaded."""
        return self._remote is None or self._remote.has_keys

    def prefetch(self) -> None:
        """Loads the key set now (warms the cache at start); raises KeySetUnavailable when that fails."""
        if self._remote is not None:
            self._remote.prefetch()

    def settled(self, timeout: Optional[float] = None) -> bool:
        """Waits until no key set load is in flight (tests; a refresh never makes a request wait)."""
        return True if self._remote is None else self._remote.settled(timeout)

    def verify(self, token: Optional[str], request_host: Optional[str]) -> Descriptor:
        """Verifies ``token`` for a request to ``request_host`` (Host header, port allowed)."""
        if token is None:
            raise InvalidDescriptor("missing", "no descriptor")
        if not isinstance(token, str) or token == "":
            raise InvalidDescriptor("malformed", "empty value")
        # Intermediaries join a duplicated header with ", ": never pick one of the parts.
        if "," in token:
            raise InvalidDescriptor("comma", "value contains a comma (duplicated header)")
        if len(token.encode("utf-8")) > MAX_TOKEN_BYTES:
            raise InvalidDescriptor("too_large", f"token over {MAX_TOKEN_BYTES} bytes")
        parts = token.split(".")
        if len(parts) != 3:
            raise InvalidDescriptor("malformed", "not a compact JWS (three parts)")
        header = _json_part(parts[0], "header")
        claims = _json_part(parts[1], "payload")
        if parts[2] != "":  # an empty signature (alg "none") is refused by its alg below
            _b64decode(parts[2], "signature")

        if header.get("typ") != TYP:
            raise InvalidDescriptor("typ", f"typ must be {TYP}")
        forbidden = [name for name in FORBIDDEN_HEADERS if name in header]
        if forbidden:
            raise InvalidDescriptor("forbidden_header", f"header parameter {forbidden[0]} is not accepted")
        kid = header.get("kid")
        key = self._key(kid) if isinstance(kid, str) else None
        if key is None:
            raise InvalidDescriptor("unknown_kid", "missing kid" if not isinstance(kid, str) else "unknown kid")
        # The key decides the algorithm, never the token (RFC 8725 section 3.1).
        if header.get("alg") != key.alg:
            raise InvalidDescriptor("alg", f"alg {header.get('alg')!r} does not match the key's {key.alg}")
        try:
            # The signature only: every claim is checked below, in the specification's order, on
            # the payload as parsed above (NaN and Infinity already refused as not JSON).
            jwt.api_jws.PyJWS().decode(token, key.key, algorithms=[key.alg])
        except jwt.InvalidSignatureError:
            raise InvalidDescriptor("bad_signature", "bad signature") from None
        except jwt.PyJWTError as err:
            raise InvalidDescriptor("malformed", type(err).__name__) from None
        return self._check_claims(claims, request_host)

    def _key(self, kid: str) -> Optional[_Key]:
        key = self._static.get(kid)
        if key is None and self._remote is not None:
            key = self._remote.get(kid)
        return key

    def _check_claims(self, c: Dict[str, Any], request_host: Optional[str]) -> Descriptor:
        v = c.get("v")
        if not _is_number(v) or v != 1:
            raise InvalidDescriptor("version", f"unsupported version {v!r}")
        if c.get("iss") != self.issuer:
            raise InvalidDescriptor("issuer", "wrong issuer")
        # aud is one string in descriptor v1: an array is refused rather than searched.
        if not isinstance(c.get("aud"), str) or c["aud"] != self.audience:
            raise InvalidDescriptor("audience", "wrong audience")
        # Numeric dates are integers from 0 to 2^53-1 (any JSON spelling of one): 1e400 parses as
        # inf, which would mean "never expires" to a comparison and crash int().
        if not all(_is_int(c.get(name), 0, MAX_SAFE_INTEGER) for name in ("exp", "nbf", "iat")):
            raise InvalidDescriptor("claims", "exp, nbf and iat must be integers from 0 to 2^53-1")
        if not isinstance(c.get("sub"), str) or not isinstance(c.get("host"), str) or not _is_int(c.get("epoch"), 0, MAX_SAFE_INTEGER):
            raise InvalidDescriptor("claims", "sub and host must be strings, epoch an integer from 0 to 2^53-1")
        db = c.get("db")
        if not isinstance(db, dict) or not isinstance(db.get("name"), str) or not isinstance(db.get("host"), str) or not _is_int(db.get("port"), 1, 65535):
            raise InvalidDescriptor("claims", "db must have string name and host and an integer port from 1 to 65535")
        now = self._clock()
        # RFC 7519 sections 4.1.4 and 4.1.5, with the leeway.
        if now >= c["exp"] + self.leeway:
            raise InvalidDescriptor("expired", f"expired (exp {int(c['exp'])})")
        if now < c["nbf"] - self.leeway:
            raise InvalidDescriptor("not_yet_valid", f"not yet valid (nbf {int(c['nbf'])})")
        host = canonical_host(request_host)
        # A request host without a canonical form (an IP literal, garbage) matches no claim, not even an empty one.
        if host is None or c["host"] != host:
            raise InvalidDescriptor("host_mismatch", "host claim does not match the request host")
        return Descriptor(
            tenant=c["sub"],
            host=c["host"],
            db=Database(name=db["name"], host=db["host"], port=int(db["port"])),
            epoch=int(c["epoch"]),
            issuer=c["iss"],
            audience=c["aud"],
            issued_at=int(c["iat"]),
            expires_at=int(c["exp"]),
        )


class EnvVerifier:
    """A :class:`Verifier` configured from the app's environment, read at first use (``verify``,
    ``prefetch``), never when it is created, so ``manage.py`` commands, build steps and consoles
    run without the settings:

    - ``TENANT_DESCRIPTOR_ISSUER``: the proxy's deploymentId
    - ``TENANT_DESCRIPTOR_AUDIENCE``: this app's descriptor.audience
    - ``TENANT_DESCRIPTOR_JWKS_URL``: the proxy's key set, or ``TENANT_DESCRIPTOR_KEYS_FILE``: a key file

    ``TENANT_PROXY_*`` belongs to the proxy (which refuses variables it does not know). A missing
    setting raises :class:`ConfigurationError` naming the variables: an error, never a refusal.
    """

    def __init__(self, environ: Optional[Mapping[str, str]] = None, **options: Any) -> None:
        self._environ = environ
        self._options = options
        self._verifier: Optional[Verifier] = None
        self._lock = threading.Lock()

    def _get(self) -> Verifier:
        if self._verifier is None:
            with self._lock:
                if self._verifier is None:
                    self._verifier = self._build()
        return self._verifier

    def _build(self) -> Verifier:
        env = self._environ if self._environ is not None else os.environ

        def read(name: str) -> Optional[str]:
            value = (env.get(name) or "").strip()
            return value or None

        options = dict(self._options)
        issuer = options.pop("issuer", None) or read("TENANT_DESCRIPTOR_ISSUER")
        audience = options.pop("audience", None) or read("TENANT_DESCRIPTOR_AUDIENCE")
        url = read("TENANT_DESCRIPTOR_JWKS_URL")
        keys_file = read("TENANT_DESCRIPTOR_KEYS_FILE")
        missing = [name for name, value in (("TENANT_DESCRIPTOR_ISSUER", issuer), ("TENANT_DESCRIPTOR_AUDIENCE", audience)) if value is None]
        if url is None and keys_file is None:
            missing.append("TENANT_DESCRIPTOR_JWKS_URL (or TENANT_DESCRIPTOR_KEYS_FILE)")
        if missing:
            raise ConfigurationError(f"descriptor verifier: {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not set")
        if url is not None and keys_file is not None:
            raise ConfigurationError("descriptor verifier: set TENANT_DESCRIPTOR_JWKS_URL or TENANT_DESCRIPTOR_KEYS_FILE, not both")
        return Verifier(issuer=issuer, audience=audience, jwks_url=url, keys_file=keys_file, **options)

    @property
    def jwks_fetches(self) -> int:
        return self._verifier.jwks_fetches if self._verifier is not None else 0

    @property
    def has_keys(self) -> bool:
        return self._verifier is not None and self._verifier.has_keys

    def prefetch(self) -> None:
        self._get().prefetch()

    def settled(self, timeout: Optional[float] = None) -> bool:
        return True if self._verifier is None else self._verifier.settled(timeout)

    def verify(self, token: Optional[str], request_host: Optional[str]) -> Descriptor:
        return self._get().verify(token, request_host)


def _scheme(url: str) -> str:
    return url.split(":", 1)[0].lower() if ":" in url else ""


def _describe_url(url: str) -> str:
    # No userinfo or query in messages.
    import urllib.parse  # noqa: PLC0415

    p = urllib.parse.urlsplit(url)
    return f"{p.scheme}://{p.hostname}{':' + str(p.port) if p.port else ''}{p.path}"


def _is_int(value: Any, low: int, high: int) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return low <= value <= high
    # JSON writes the same number as 1800000060 or 1.80000006e9: the value counts, not the spelling.
    return isinstance(value, float) and math.isfinite(value) and value.is_integer() and low <= value <= high


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(part: str, what: str) -> bytes:
    # RFC 7515 section 2: unpadded base64url, and only its canonical spelling.
    if not _B64URL.match(part):
        raise InvalidDescriptor("malformed", f"{what} is not unpadded base64url")
    try:
        data = base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
    except (binascii.Error, ValueError):
        raise InvalidDescriptor("malformed", f"{what} is not base64url") from None
    if _b64encode(data) != part:
        raise InvalidDescriptor("malformed", f"{what} is not canonical base64url")
    return data


def _not_json(constant: str) -> Any:
    # RFC 8259 section 6: NaN and Infinity are not JSON, though Python's json module reads them.
    raise ValueError(f"{constant} is not JSON")


def _json_part(part: str, what: str) -> Dict[str, Any]:
    try:
        value = json.loads(_b64decode(part, what).decode("utf-8"), parse_constant=_not_json)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise InvalidDescriptor("malformed", f"{what} is not JSON") from None
    if not isinstance(value, dict):
        raise InvalidDescriptor("malformed", f"{what} is not a JSON object")
    return value
