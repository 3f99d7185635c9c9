"""Verify tenant-proxy's signed tenant database descriptor (``X-Tenant-Descriptor``).

    verifier = Verifier(jwks_url="http://tenant-proxy:9394/.well-known/tenant-proxy/jwks.json",
                        issuer="shop-production", audience="shop")
    descriptor = verifier.verify(token, request_host="acme.example.com")
    descriptor.tenant, descriptor.db.name  # ("acme", "acme_prod")
"""

from .middleware import ASGIMiddleware, ENVIRON_KEY, STATE_KEY, WSGIMiddleware
from .host import canonical_host
from .verifier import (
    MAX_TOKEN_BYTES,
    ConfigurationError,
    Database,
    Descriptor,
    DescriptorError,
    EnvVerifier,
    InvalidDescriptor,
    KeySetUnavailable,
    Verifier,
    hs256_kid,
    keys_from_jwks,
    keys_from_text,
)

__all__ = [
    "ASGIMiddleware",
    "ENVIRON_KEY",
    "STATE_KEY",
    "WSGIMiddleware",
    "MAX_TOKEN_BYTES",
    "ConfigurationError",
    "Database",
    "Descriptor",
    "DescriptorError",
    "EnvVerifier",
    "InvalidDescriptor",
    "KeySetUnavailable",
    "Verifier",
    "canonical_host",
    "hs256_kid",
    "keys_from_jwks",
    "keys_from_text",
]
