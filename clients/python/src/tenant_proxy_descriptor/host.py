"""The request host as tenant-proxy writes the ``host`` claim (docs/descriptor.md, check 16).

Lower case, port removed, one trailing dot removed, internationalized names converted by UTS #46
processing (nontransitional, as WHATWG URL and Node's ``url.domainToASCII``, which the proxy
uses), then the RFC 1035/1123 name rules. IP literals and invalid names have no canonical form
and match no claim. The UTS #46 mapping table comes from the ``idna`` package (Debian:
python3-idna); without it, a host with non-ASCII characters matches no claim (browsers send
punycode, so ASCII hosts are what the proxy forwards in practice).
"""

from __future__ import annotations

import logging
import re
from typing import List, Optional

log = logging.getLogger("tenant_proxy_descriptor")

_LDH = re.compile(r"^[a-z0-9-]+$")
_PORT = re.compile(r"^[0-9]{0,5}$")
_ZERO_WIDTH_JOINERS = ("\u200c", "\u200d")
_warned = False


def canonical_host(value: Optional[str]) -> Optional[str]:
    """The canonical host of a Host header value, or None when it is not a routable name."""
    if not isinstance(value, str) or value == "":
        return None
    # RFC 9110 field values carry no controls; whitespace is never part of a host.
    if any(ord(c) <= 0x20 or ord(c) == 0x7F for c in value):
        return None
    if "@" in value or value.startswith("["):
        return None
    host = value
    colon = host.rfind(":")
    if colon != -1:
        # More than one colon is an IPv6 address without brackets.
        if host.find(":") != colon or not _is_port(host[colon + 1:]):
            return None
        host = host[:colon]
    if host == "":
        return None
    if not host.isascii():
        ascii_host = _to_ascii(host)
        if ascii_host is None:
            return None
        host = ascii_host
    return _check_name(host.lower())


def _is_port(digits: str) -> bool:
    # RFC 3986: digits, none allowed ("host:" is the default port), at most 65535.
    return bool(_PORT.match(digits)) and (digits == "" or int(digits) <= 65535)


def _idna():  # type: ignore[no-untyped-def]
    global _warned
    try:
        import idna  # noqa: PLC0415 - optional at import time, needed for non-ASCII hosts only
    except ImportError:
        if not _warned:
            _warned = True
            log.warning("the idna package is not installed: request hosts with non-ASCII characters match no descriptor (pip install idna, or apt-get install python3-idna)")
        return None
    return idna


def _to_ascii(host: str) -> Optional[str]:
    idna = _idna()
    if idna is None:
        return None
    try:
        # UTS #46 mapping, nontransitional (sharp s stays, as in WHATWG URL), no STD3 rules.
        mapped = idna.uts46_remap(host, std3_rules=False, transitional=False)
    except (idna.IDNAError, UnicodeError):
        return None
    out: List[str] = []
    for label in mapped.split("."):
        if label.isascii():
            out.append(label)
            continue
        if not _valid_unicode_label(idna, label):
            return None
        try:
            out.append("xn--" + label.encode("punycode").decode("ascii"))
        except UnicodeError:
            return None
    return ".".join(out)


def _valid_unicode_label(idna, label: str) -> bool:  # type: ignore[no-untyped-def]
    # The UTS #46 validity criteria WHATWG URL applies: no leading combining mark, joiners only in
    # their contexts (CheckJoiners), the bidi rule (CheckBidi).
    try:
        idna.check_initial_combiner(label)
        for pos, char in enumerate(label):
            if char in _ZERO_WIDTH_JOINERS and not idna.valid_contextj(label, pos):
                return False
        idna.check_bidi(label)
    except (idna.IDNAError, UnicodeError, ValueError):
        return False
    return True


def _check_name(raw: str) -> Optional[str]:
    name = raw[:-1] if raw.endswith(".") else raw
    if name == "" or len(name) > 253:
        return None
    labels = name.split(".")
    for label in labels:
        if not 1 <= len(label) <= 63 or label.startswith("-") or label.endswith("-") or not _LDH.match(label):
            return None
    # An A-label must decode (RFC 5891 section 5.4), or two spellings could name one host.
    if "xn--" in name and not all(_a_label_decodes(label) for label in labels if label.startswith("xn--")):
        return None
    # RFC 1123 section 2.1: a top-level label is never all-numeric, so such a name is an address.
    if labels[-1].isdigit():
        return None
    return name


def _a_label_decodes(label: str) -> bool:
    try:
        decoded = label[4:].encode("ascii").decode("punycode")
    except UnicodeError:
        return False
    if decoded == "":
        return False
    idna = _idna()
    if idna is None:
        return not decoded.isascii()
    try:
        # The decoded label must be one UTS #46 keeps as it is (no disallowed or mapped code point).
        return idna.uts46_remap(decoded, std3_rules=False, transitional=False) == decoded and _valid_unicode_label(idna, decoded)
    except (idna.IDNAError, UnicodeError):
        return False
