"""Test helpers: import path and the shared fixtures (test/fixtures/descriptor-vectors.json)."""

import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "src"))

VECTORS_PATH = os.environ.get(
    "TENANT_PROXY_VECTORS",
    os.path.join(HERE, "..", "..", "..", "test", "fixtures", "descriptor-vectors.json"),
)

with open(VECTORS_PATH, encoding="utf-8") as f:
    VECTORS = json.load(f)


def case(name):
    return next(c for c in VECTORS["cases"] if c["name"] == name)


def fixture_verifier(**options):
    """A verifier trusting the fixture's JWKS and HS256 secret, at the fixture's fixed time."""
    from tenant_proxy_descriptor import Verifier

    defaults = dict(
        jwks=VECTORS["jwks"],
        secrets=VECTORS["keys"]["hs256"]["secret"],
        issuer=VECTORS["issuer"],
        audience=VECTORS["audience"],
        leeway=VECTORS["leeway"],
        clock=lambda: VECTORS["now"],
    )
    defaults.update(options)
    return Verifier(**defaults)
