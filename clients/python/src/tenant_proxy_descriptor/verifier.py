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
import re
import threading
import time
import urllib.request
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, Mapping, Optional, Union

import jwt
from jwt.algorithms import ECAlgorithm

TYP = "tenant-db+jwt"
#: Largest accepted token, in bytes; the proxy's tokens are well under 1 KiB.
MAX_TOKEN_BYTES = 8192
#: The specification allows at most this much clock skew, in seconds.
MAX_LEEWAY = 5
#: JOSE header parameters that would let a token name its own key, or demand extensions.
FORBIDDEN_HEADERS = ("crit", "jwk", "jku", "x5u", "x5c")
#: Reasons that describe a malformed request rather than a failed verification (HTTP 400).
BAD_REQUEST_REASONS = frozenset({"missing", "malformed", "comma", "too_large"})

_B64URL = re.compile(r"^[A-Za-z0-9_-]+$")


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


def canonical_host(value: str) -> str:
    """The request host as the proxy writes the ``host`` claim: lower case, no port, no trailing dot."""
    host = value.lower()
    if host.startswith("["):
        end = host.find("]")
        host = host[: end + 1] if end != -1 else host
    elif host.count(":") == 1:
        host = host.split(":", 1)[0]
    return host[:-1] if host.endswith(".") else host


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


class _RemoteKeySet:
    """A JWKS URL: fetched on first use, again after ``max_age`` seconds, and on an unknown kid at
    most once per ``cooldown`` seconds (so a flood of forged kids cannot hammer the proxy)."""

    def __init__(self, url: str, fetch: Callable[[str], bytes], clock: Callable[[], float], max_age: float, cooldown: float) -> None:
        self._url = url
        self._fetch = fetch
        self._clock = clock
        self._max_age = max_age
        self._cooldown = cooldown
        self._lock = threading.Lock()
        self._keys: Optional[Dict[str, _Key]] = None
        self._fetched_at = 0.0
        self._attempted_at: Optional[float] = None
        #: Number of fetch attempts (for tests and metrics).
        self.fetches = 0

    def get(self, kid: str) -> Optional[_Key]:
        with self._lock:
            now = self._clock()
            if self._keys is None or now - self._fetched_at >= self._max_age:
                self._refresh(now, keep_stale=self._keys is not None)
            assert self._keys is not None
            key = self._keys.get(kid)
            if key is None and self._attempted_at is not None and now - self._attempted_at >= self._cooldown:
                self._refresh(now, keep_stale=True)
                key = self._keys.get(kid)
            return key

    def _refresh(self, now: float, keep_stale: bool) -> None:
        self._attempted_at = now
        self.fetches += 1
        try:
            self._keys = keys_from_jwks(self._fetch(self._url))
            self._fetched_at = now
        except Exception as err:  # network, HTTP or JSON error: keep what we had, if anything
            if not keep_stale:
                raise KeySetUnavailable("jwks_unavailable", f"cannot fetch {self._url}: {type(err).__name__}") from None


def _http_get(url: str, timeout: float = 2.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as res:  # noqa: S310 - the configured key set URL
        return res.read(1 << 20)


class Verifier:
    """Verifies descriptors for one app.

    :param jwks: a JWKS (dict or JSON text) with the proxy's ES256 public keys.
    :param jwks_url: the proxy's key set, e.g. ``http://tenant-proxy:9394/.well-known/tenant-proxy/jwks.json``.
    :param secrets: HS256 secret(s), for proxies configured with HS256.
    :param issuer: the proxy's ``deploymentId``; :param audience: this app's ``descriptor.audience``.
    :param leeway: clock skew allowed on ``exp`` and ``nbf``, 0 to 5 seconds.
    :param clock: returns the current time in seconds (tests inject a fixed one).
    """

    def __init__(
        self,
        *,
        issuer: str,
        audience: str,
        jwks: Union[str, bytes, Mapping[str, Any], None] = None,
        jwks_url: Optional[str] = None,
        secrets: Union[str, Iterable[str], Mapping[str, str], None] = None,
        leeway: float = 5,
        clock: Callable[[], float] = time.time,
        jwks_max_age: float = 60,
        jwks_cooldown: float = 30,
        fetch: Callable[[str], bytes] = _http_get,
    ) -> None:
        if not issuer or not audience:
            raise ValueError("issuer and audience are required")
        if not 0 <= leeway <= MAX_LEEWAY:
            raise ValueError(f"leeway must be between 0 and {MAX_LEEWAY} seconds")
        if jwks is None and jwks_url is None and secrets is None:
            raise ValueError("give jwks, jwks_url or secrets")
        self.issuer = issuer
        self.audience = audience
        self.leeway = leeway
        self._clock = clock
        self._static: Dict[str, _Key] = {}
        if jwks is not None:
            self._static.update(keys_from_jwks(jwks))
        if secrets is not None:
            self._static.update(keys_from_secrets(secrets))
        self._remote = _RemoteKeySet(jwks_url, fetch, clock, jwks_max_age, jwks_cooldown) if jwks_url else None

    @property
    def jwks_fetches(self) -> int:
        """How many times the JWKS URL was fetched."""
        return self._remote.fetches if self._remote else 0

    def verify(self, token: Optional[str], request_host: str) -> Descriptor:
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
        _json_part(parts[1], "payload")
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
            raise InvalidDescriptor("unknown_kid", "missing kid" if not isinstance(kid, str) else f"unknown kid {kid!r}")
        # The key decides the algorithm, never the token (RFC 8725 section 3.1).
        if header.get("alg") != key.alg:
            raise InvalidDescriptor("alg", f"alg {header.get('alg')!r} does not match the key's {key.alg}")

        try:
            claims = jwt.decode(
                token,
                key.key,
                algorithms=[key.alg],
                issuer=self.issuer,
                audience=self.audience,
                # Times are checked below with the injectable clock and the specification's rule.
                options={"verify_exp": False, "verify_nbf": False, "verify_iat": False, "verify_iss": True, "verify_aud": True},
            )
        except jwt.InvalidSignatureError:
            raise InvalidDescriptor("bad_signature", "bad signature") from None
        except (jwt.InvalidIssuerError, jwt.MissingRequiredClaimError) as err:
            claim = getattr(err, "claim", "iss")
            raise InvalidDescriptor("audience" if claim == "aud" else "issuer", str(err)) from None
        except jwt.InvalidAudienceError as err:
            raise InvalidDescriptor("audience", str(err)) from None
        except jwt.PyJWTError as err:
            raise InvalidDescriptor("malformed", str(err)) from None
        return self._check_claims(claims, request_host)

    def _key(self, kid: str) -> Optional[_Key]:
        key = self._static.get(kid)
        if key is None and self._remote is not None:
            key = self._remote.get(kid)
        return key

    def _check_claims(self, c: Dict[str, Any], request_host: str) -> Descriptor:
        v = c.get("v")
        if not _is_number(v) or v != 1:
            raise InvalidDescriptor("version", f"unsupported version {v!r}")
        if c.get("iss") != self.issuer:
            raise InvalidDescriptor("issuer", "wrong issuer")
        # aud is one string in descriptor v1: an array is refused rather than searched.
        if not isinstance(c.get("aud"), str) or c["aud"] != self.audience:
            raise InvalidDescriptor("audience", "wrong audience")
        db = c.get("db")
        if not all(_is_number(c.get(name)) for name in ("exp", "nbf", "iat", "epoch")):
            raise InvalidDescriptor("claims", "exp, nbf, iat and epoch must be numbers")
        if not isinstance(c.get("sub"), str) or not isinstance(c.get("host"), str):
            raise InvalidDescriptor("claims", "sub and host are required")
        if not isinstance(db, dict) or not isinstance(db.get("name"), str) or not isinstance(db.get("host"), str) or not _is_number(db.get("port")):
            raise InvalidDescriptor("claims", "malformed db claim")
        now = self._clock()
        # RFC 7519 sections 4.1.4 and 4.1.5, with the leeway.
        if now >= c["exp"] + self.leeway:
            raise InvalidDescriptor("expired", f"expired (exp {c['exp']})")
        if now < c["nbf"] - self.leeway:
            raise InvalidDescriptor("not_yet_valid", f"not yet valid (nbf {c['nbf']})")
        if c["host"] != canonical_host(request_host or ""):
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


def _json_part(part: str, what: str) -> Dict[str, Any]:
    try:
        value = json.loads(_b64decode(part, what).decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise InvalidDescriptor("malformed", f"{what} is not JSON") from None
    if not isinstance(value, dict):
        raise InvalidDescriptor("malformed", f"{what} is not a JSON object")
    return value
