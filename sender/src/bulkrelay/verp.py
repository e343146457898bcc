"""VERP envelope senders: one Return-Path per recipient, signed so forged tokens are ignored.

An address looks like ``bounces+r1234-5f0c2a9be1d7@bounce.example.test``:

* ``bounces`` is the configured prefix, ``+`` the sub-address delimiter (Postfix
  ``recipient_delimiter = +`` on the bounce mailbox host delivers it to ``bounces``);
* ``r1234`` is the queue's recipient id (the message is reached through the recipient row);
* ``5f0c2a9be1d7`` is the first 12 hex digits (48 bits) of HMAC-SHA256(key, "prefix:id").

The token uses only lower-case letters, digits and ``-`` so receivers that fold the case of
the local part, or quote it oddly, still hand back something that parses. The HMAC binds the
prefix and id but not the domain, so moving the bounce domain keeps old bounces readable.
"""

from __future__ import annotations

import hashlib
import hmac
import re

MAC_HEX = 12
_TOKEN = re.compile(r"^r([1-9][0-9]{0,17})-([0-9a-f]{12})$")
_PREFIX = re.compile(r"^[a-z0-9][a-z0-9._-]{0,40}$")


def _mac(prefix: str, recipient_id: int, key: bytes) -> str:
    digest = hmac.new(key, f"{prefix.lower()}:{recipient_id}".encode("ascii"), hashlib.sha256)
    return digest.hexdigest()[:MAC_HEX]


def _check_key(key: bytes) -> None:
    if not key:
        raise ValueError("VERP key is empty: set envelope.verp_key_file to a file with 32 random bytes")


def make_token(prefix: str, recipient_id: int, key: bytes) -> str:
    """The part after ``+``: ``r<id>-<mac>``."""
    _check_key(key)
    if not isinstance(recipient_id, int) or recipient_id <= 0:
        raise ValueError(f"recipient id must be a positive integer, not {recipient_id!r}")
    return f"r{recipient_id}-{_mac(prefix, recipient_id, key)}"


def make_address(prefix: str, domain: str, recipient_id: int, key: bytes) -> str:
    """``<prefix>+r<id>-<mac>@<domain>`` for one queue recipient."""
    if not _PREFIX.match(prefix.lower()):
        raise ValueError(f"VERP prefix {prefix!r} is not a plain local part: use e.g. 'bounces'")
    domain = domain.strip().lower().rstrip(".")
    if not domain or "@" in domain:
        raise ValueError(f"bounce domain {domain!r} is not a domain name: set envelope.bounce_domain")
    return f"{prefix.lower()}+{make_token(prefix, recipient_id, key)}@{domain}"


def parse_address(address: str, key: bytes, prefix: str = "bounces") -> int | None:
    """The recipient id carried by a VERP address, or None when it is not one of ours.

    Accepts the address bare or in angle brackets, in any case. A wrong MAC, another
    prefix, or an address without a token all give None (never an exception), so anything a
    stranger puts into a bounce's headers is simply ignored.
    """
    if not key or not isinstance(address, str):
        return None
    addr = address.strip().strip("<>").strip().lower()
    local, at, _domain = addr.rpartition("@")
    if not at:
        local = addr
    if local.startswith('"') and local.endswith('"') and len(local) >= 2:
        local = local[1:-1]
    base, plus, token = local.partition("+")
    if not plus or base != prefix.lower():
        return None
    match = _TOKEN.match(token)
    if not match:
        return None
    recipient_id = int(match.group(1))
    if not hmac.compare_digest(match.group(2), _mac(prefix, recipient_id, key)):
        return None
    return recipient_id


_CANDIDATE = re.compile(r"[A-Za-z0-9._-]{1,41}\+r[0-9]{1,18}-[0-9A-Fa-f]{12}@[A-Za-z0-9.-]+")


def find_in_text(text: str, key: bytes, prefix: str = "bounces") -> int | None:
    """The first valid VERP recipient id found anywhere in ``text`` (headers of a bounce)."""
    for candidate in _CANDIDATE.findall(text or ""):
        found = parse_address(candidate, key, prefix)
        if found is not None:
            return found
    return None
