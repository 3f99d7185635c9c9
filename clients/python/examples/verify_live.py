#!/usr/bin/env python3
"""Verify one descriptor against a running proxy's key set and print the tenant's database.

    TENANT_DESCRIPTOR=<token> python3 examples/verify_live.py \\
        --jwks-url http://127.0.0.1:9394/.well-known/tenant-proxy/jwks.json \\
        --issuer shop-production --audience shop --host acme.example.com

Prints ``tenant=acme db=acme_prod db_host=... db_port=5432 epoch=1`` and exits 0, or prints
``refused reason=<code>`` and exits 1. The token is read from the environment, never from argv
(where ``ps`` would show it).
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))

from tenant_proxy_descriptor import DescriptorError, Verifier  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jwks-url", required=True)
    parser.add_argument("--issuer", required=True)
    parser.add_argument("--audience", required=True)
    parser.add_argument("--host", required=True, help="the request host the token is presented for")
    args = parser.parse_args()
    verifier = Verifier(jwks_url=args.jwks_url, issuer=args.issuer, audience=args.audience)
    try:
        d = verifier.verify(os.environ.get("TENANT_DESCRIPTOR"), args.host)
    except DescriptorError as err:
        print(f"refused reason={err.reason}")
        return 1
    print(f"tenant={d.tenant} db={d.db.name} db_host={d.db.host} db_port={d.db.port} epoch={d.epoch}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
