"""Postfix's outbound TLS levels and the relay's per-domain policy table (smtp_tls_policy_maps).

The one home of "which levels exist" and "which override lowers security": the relay_postfix
role's filter validates the inventory's overrides with it, and the audit judges the live table.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping

from bulkrelay.names import is_domain

# The table relay_postfix renders (templates/etc/postfix/tls_policy.j2) and main.cf names first in
# smtp_tls_policy_maps; the audit dumps it with `postmap -s`.
TABLE = "texthash:/etc/postfix/tls_policy"
# Debian's postfix-mta-sts-resolver (roles/relay_mta_sts): the MTA-STS socketmap after TABLE.
MTA_STS_UNIT = "postfix-mta-sts-resolver.service"

# Postfix's smtp_tls_security_level values in TLS_README's order ("TLS security levels"): the
# two that allow clear text first.
LEVELS = ("none", "may", "encrypt", "dane", "dane-only", "fingerprint", "verify", "secure")
# What an override may say: fingerprint needs match= certificate digests, not a one-word entry.
OVERRIDE_LEVELS = tuple(level for level in LEVELS if level != "fingerprint")
# Levels under which mail may leave in clear text (none always, may when STARTTLS is missing).
CLEAR_TEXT = ("none", "may")


_NEXTHOP = re.compile(r"^\[(?P<host>[^\[\]]+)\](?::(?P<port>\d{1,5}))?$")


def is_destination(key: object) -> bool:
    """A key Postfix looks the policy up by (the next-hop destination): a lower-case recipient
    domain (partner.example), or the verbatim next hop a transport entry names ([192.0.2.10]:25,
    [mx.partner.example]) for domains routed there."""
    if not isinstance(key, str):
        return False
    nexthop = _NEXTHOP.match(key)
    if nexthop is None:
        return is_domain(key, min_labels=2)
    host, port = nexthop.group("host"), nexthop.group("port")
    if port is not None and not 0 < int(port) < 65536:
        return False
    try:
        ipaddress.ip_address(host.removeprefix("ipv6:"))
    except ValueError:
        return is_domain(host, min_labels=2)
    return True


def bad_overrides(overrides: object) -> list[str]:
    """Entries of ``{destination: level}`` that are wrong, each as "destination: level" (empty
    when all are right): a destination of ``is_destination``, a level of OVERRIDE_LEVELS."""
    if not isinstance(overrides, Mapping):
        return [f"{overrides!r} (not a mapping of domain to level)"]
    return [
        f"{key}: {level}"
        for key, level in overrides.items()
        if not is_destination(key) or level not in OVERRIDE_LEVELS
    ]


def uses_dane(global_level: str, overrides: Mapping[str, str]) -> bool:
    """Does any destination use DANE (Postfix then needs smtp_dns_support_level = dnssec)?"""
    return any(level in ("dane", "dane-only") for level in (global_level, *overrides.values()))


def parse_table(text: str) -> dict[str, str]:
    """`postmap -s` output (key, TAB, value per line) as {domain: level}: the value's first word
    is the level, attributes such as match= follow it."""
    table = {}
    for line in text.splitlines():
        key, _, value = line.partition("\t") if "\t" in line else line.partition(" ")
        words = value.split()
        if key.strip() and words:
            table[key.strip().lower()] = words[0].lower()
    return table


def lowered(global_level: str, table: Mapping[str, str]) -> dict[str, str]:
    """The overrides that let mail to a domain leave in clear text where the global level would
    not: a none/may entry weaker than the global level."""
    rank = {level: i for i, level in enumerate(LEVELS)}
    floor = rank.get(global_level, 0)
    return {
        domain: level
        for domain, level in sorted(table.items())
        if level in CLEAR_TEXT and rank[level] < floor
    }


# DANE's local validating resolver (roles/relay_resolver): Debian's unbound on loopback, which
# Postfix asks through /etc/resolv.conf. The role and the audit ask it with
# `dig +dnssec +tries=1 +time=N @127.0.0.1 NAME SOA` and judge the reply with judge_dig.
RESOLVER_UNIT = "unbound.service"
RESOLVER_ADDRESS = "127.0.0.1"  # where roles/relay_resolver's unbound listens
VALIDATED, NOT_VALIDATED, UNKNOWN = "validated", "not validated", "could not tell"
_DIG_STATUS = re.compile(r"->>HEADER<<-.*\bstatus: ([A-Z]+)")
_DIG_FLAGS = re.compile(r"^;; flags: ([a-z ]*);", re.MULTILINE)


def resolv_conf_problem(text: str, resolver: str) -> str:
    """Why /etc/resolv.conf keeps Postfix's lookups away from the validating resolver, or "".
    Postfix asks glibc, which tries every `nameserver` in turn (a SERVFAIL for a forged answer
    would be retried on the next, non-validating one) and clears the AD flag without
    `options trust-ad`: either way DANE silently degrades to may."""
    servers, options = [], []
    for line in text.splitlines():
        words = line.split("#")[0].split(";")[0].split()
        if words[:1] == ["nameserver"]:
            servers += words[1:2]
        elif words[:1] == ["options"]:
            options += words[1:]
    if servers != [resolver]:
        return f"/etc/resolv.conf names {', '.join(servers) or 'no nameserver'}, not {resolver} alone"
    if "trust-ad" not in options:
        return "/etc/resolv.conf lacks `options trust-ad`: glibc clears the AD flag Postfix needs"
    return ""


def judge_dig(rc: int, stdout: str, name: str, *, bogus: bool = False) -> tuple[str, str]:
    """One dig reply from the validating resolver as (VALIDATED | NOT_VALIDATED | UNKNOWN, why).
    A probe name (bogus=False) validates when it comes back NOERROR with the AD flag; a name
    that must fail validation (bogus=True) passes only as SERVFAIL. No reply (a timeout, a
    refused connection: dig exits 9) or output without a header is UNKNOWN, never a pass."""
    status = _DIG_STATUS.search(stdout)
    flags = _DIG_FLAGS.search(stdout)
    if rc != 0 or not status or not flags:
        last = (stdout.strip().splitlines() or ["no output"])[-1].lstrip("; ")
        return UNKNOWN, f"{name} SOA got no reply (dig exit {rc}: {last})"
    rcode, ad = status.group(1), "ad" in flags.group(1).split()
    if bogus:
        if rcode == "SERVFAIL":
            return VALIDATED, f"{name} (must fail validation) came back SERVFAIL"
        return NOT_VALIDATED, (
            f"{name} must fail validation but came back {rcode}{' with AD' if ad else ''}: forged "
            "answers would be passed on"
        )
    if rcode == "NOERROR" and ad:
        return VALIDATED, f"{name} SOA came back validated (AD flag)"
    why = "without the AD flag (not validated)" if rcode == "NOERROR" else "(validation failed or no answer)"
    return NOT_VALIDATED, f"{name} SOA came back {rcode} {why}"
