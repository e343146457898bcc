"""Domain, host-name and CIDR rules: the one home of "is this a domain / an FQDN / a network".

Pure functions on the standard library, no I/O, so the sender's config and intake, the DNS
record builder and the roles' filter plugins (which import this module on the controller) all
judge a name the same way. The callers differ on purpose, and each difference is a parameter:

- case: every rule here is lower-case; a caller that accepts ``Example.COM`` lowers it first.
- a trailing dot (the DNS root): never accepted here; a caller that tolerates it strips it first.
- ``min_labels``: 2 for a fully qualified name, 1 where a bare label is a valid domain.
- ``ldh``: letters, digits and inner hyphens per label (RFC 1123 host names). ``ldh=False`` only
  asks for non-empty labels of at most 63 octets (DNS owner names such as ``_dmarc``).
- ``tld``: ``"any"``, ``"not-numeric"`` (the last label is not all digits, so ``192.0.2.1`` is
  not a host name) or ``"letter"`` (the last label starts with a letter).
- ``max_length``: the whole name, 253 by default (RFC 1035 less the root dot); None = no limit.
"""

from __future__ import annotations

import ipaddress
import re

MAX_NAME_LENGTH = 253
MAX_LABEL_LENGTH = 63
TLD_RULES = ("any", "not-numeric", "letter")

_LDH_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")


def is_label(label: str) -> bool:
    """True for one lower-case host-name label: letters, digits, inner hyphens, 1-63 long."""
    return _LDH_LABEL.fullmatch(label) is not None


def is_domain(
    name: object,
    *,
    min_labels: int = 2,
    ldh: bool = True,
    tld: str = "any",
    max_length: int | None = MAX_NAME_LENGTH,
) -> bool:
    """True when ``name`` is a domain name by the rules the parameters choose (see the module)."""
    if tld not in TLD_RULES:
        raise ValueError(f"tld must be one of {TLD_RULES}, got {tld!r}")
    if not isinstance(name, str) or not name or (max_length is not None and len(name) > max_length):
        return False
    labels = name.split(".")
    if len(labels) < min_labels:
        return False
    if ldh:
        labels_ok = all(is_label(label) for label in labels)
    else:
        labels_ok = all(0 < len(label) <= MAX_LABEL_LENGTH for label in labels)
    if not labels_ok:
        return False
    return _tld_ok(labels[-1], tld)


def _tld_ok(last: str, tld: str) -> bool:
    if tld == "not-numeric":
        return not last.isdigit()
    if tld == "letter":
        return "a" <= last[0] <= "z"
    return True


def is_fqdn(name: object) -> bool:
    """A lower-case fully qualified host name as Postfix's myhostname wants it: two labels or
    more, letters/digits/hyphens, a top-level label that starts with a letter, no trailing dot,
    no surrounding white space."""
    return is_domain(name, min_labels=2, tld="letter")


def network(value: object) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    """The network a CIDR string or bare address names (host bits tolerated, surrounding white
    space ignored), or None when it is not one (also for non-strings and empty strings)."""
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        return ipaddress.ip_network(value.strip(), strict=False)
    except ValueError:
        return None


def bad_cidrs(values: list) -> list:
    """The entries of ``values`` that are not an IPv4/IPv6 address or CIDR network."""
    return [value for value in values if network(value) is None]
