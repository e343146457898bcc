"""DNSBL query names and nameserver addresses: pure functions, no I/O.

A DNSBL is asked about an IPv4 address by its octets reversed (192.0.2.99 -> 99.2.0.192.zone.),
about an IPv6 address by its 32 nibbles reversed (RFC 5782 section 2.4), and about a domain by
the domain itself prepended to the zone. Every name built here is absolute (trailing dot), so a
resolver's search list can never turn a miss into a false listing.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from bulkrelay.dns.resolver import Nameserver, NameserverError
from bulkrelay.dns.resolver import parse_nameserver as _parse_nameserver

# RFC 5782 section 5: test points every conforming list answers for. An IPv6 list has its own
# (127.0.0.2 / 127.0.0.1 as IPv4-mapped addresses): a list that serves only IPv6 need not answer
# the IPv4 ones, so each address family is self-tested with its own points.
IPV4_TEST_LISTED = "127.0.0.2"
IPV4_TEST_CLEAN = "127.0.0.1"
IPV6_TEST_LISTED = "::ffff:7f00:2"
IPV6_TEST_CLEAN = "::ffff:7f00:1"
DOMAIN_TEST_LISTED = "test"
DOMAIN_TEST_CLEAN = "invalid"


class InputError(ValueError):
    """Operator input (target, zone, nameserver, list setting) that cannot be used; the message
    names the problem and the fix. The CLI turns it into a one-line usage error."""


@dataclass(frozen=True)
class Target:
    """What is checked: an IP address (kind "ip", version 4 or 6) or a domain (kind "domain")."""

    value: str
    kind: str
    version: int = 0

    @property
    def label(self) -> str:
        return self.value


def normalize_zone(zone: str) -> str:
    """Lower-case a zone and make it absolute; reject what cannot be a DNS zone."""
    text = zone.strip().lower().rstrip(".")
    if not text or " " in text or ".." in text or "." not in text:
        raise InputError(f"zone {zone!r} is not a DNS zone name (expected e.g. zen.spamhaus.org)")
    for label in text.split("."):
        if len(label) > 63:
            raise InputError(f"zone {zone!r} has a label longer than 63 characters")
    return text + "."


def parse_target(text: str) -> Target:
    """An IP address (v4 or v6) or a domain name, as given by the operator."""
    value = text.strip()
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        pass
    else:
        return Target(value=address.compressed, kind="ip", version=address.version)
    domain = value.lower().rstrip(".")
    if not domain or "." not in domain or " " in domain or "/" in domain or ".." in domain:
        raise InputError(
            f"{text!r} is neither an IP address nor a domain name "
            "(give e.g. 198.51.100.25, 2001:db8::25 or example.com)"
        )
    return Target(value=domain, kind="domain")


def parse_ip_target(text: str) -> Target:
    target = parse_target(text)
    if target.kind != "ip":
        raise InputError(f"{text!r} is not an IP address; check domains with -d/--domain")
    return target


def parse_domain_target(text: str) -> Target:
    target = parse_target(text)
    if target.kind != "domain":
        raise InputError(f"{text!r} is an IP address; check addresses with -H/--host")
    return target


def reverse_ipv4(address: str) -> str:
    """'192.0.2.99' -> '99.2.0.192' (no zone, no trailing dot)."""
    return ".".join(reversed(ipaddress.IPv4Address(address).exploded.split(".")))


def reverse_ipv6(address: str) -> str:
    """'2001:db8::1' -> the 32 nibbles, lowest first, dot-separated (RFC 5782 section 2.4)."""
    hexdigits = ipaddress.IPv6Address(address).exploded.replace(":", "")
    return ".".join(reversed(hexdigits))


def query_name(target: Target, zone: str) -> str:
    """The absolute name to look up for `target` in `zone` (zone may lack its trailing dot)."""
    zone = normalize_zone(zone)
    if target.kind == "ip" and target.version == 4:
        return f"{reverse_ipv4(target.value)}.{zone}"
    if target.kind == "ip" and target.version == 6:
        return f"{reverse_ipv6(target.value)}.{zone}"
    if target.kind == "domain":
        return f"{target.value}.{zone}"
    raise InputError(f"unknown target kind {target.kind!r}")


def parse_nameserver(text: str) -> Nameserver:
    """'IP', 'IP:port', '[IPv6]:port' or a bare IPv6 address -> Nameserver, parsed by the one
    parser in bulkrelay.dns.resolver; a bad value is an InputError like every DNSBL input."""
    try:
        return _parse_nameserver(text)
    except NameserverError as exc:
        raise InputError(str(exc)) from None
