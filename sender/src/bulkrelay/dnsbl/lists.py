"""Which blacklists are asked, and what their answers mean.

Each list is a `DnsblList`: its zone, whether it lists IP addresses or domains, which return
codes mean "listed" and which mean "error" (Spamhaus answers 127.255.255.252/254/255 for a
typo in the zone, a query through a public resolver, and rate limiting - none of them is a
listing), which address families an IP list serves (ipv4/ipv6), its RFC 5782 self-test points
for each family, whether it is an allowlist (reported apart, never a listing), and an optional
Spamhaus DQS zone used when a DQS key is configured.

`DEFAULT_LISTS` is the curated default set; `Settings.from_mapping` reads the JSON/inventory
form (see roles/dnsbl_monitor/README.md) and refuses lists known to be shut down.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from bulkrelay.dnsbl.names import (
    DOMAIN_TEST_CLEAN,
    DOMAIN_TEST_LISTED,
    IPV4_TEST_CLEAN,
    IPV4_TEST_LISTED,
    IPV6_TEST_CLEAN,
    IPV6_TEST_LISTED,
    InputError,
    Nameserver,
    normalize_zone,
    parse_nameserver,
)

KINDS = ("ip", "domain")


@dataclass(frozen=True)
class CodeSet:
    """A set of IPv4 return codes written as addresses, ranges (a-b) or networks (a/n)."""

    ranges: tuple[tuple[int, int], ...]
    text: tuple[str, ...]

    @classmethod
    def parse(cls, entries: Iterable[str] | str, what: str) -> CodeSet:
        if isinstance(entries, str):
            entries = [entries]
        ranges: list[tuple[int, int]] = []
        texts: list[str] = []
        for raw in entries:
            entry = str(raw).strip()
            try:
                if "/" in entry:
                    net = ipaddress.IPv4Network(entry, strict=False)
                    ranges.append((int(net.network_address), int(net.broadcast_address)))
                elif "-" in entry:
                    low, high = (int(ipaddress.IPv4Address(p.strip())) for p in entry.split("-", 1))
                    if low > high:
                        raise ValueError("range runs backwards")
                    ranges.append((low, high))
                else:
                    value = int(ipaddress.IPv4Address(entry))
                    ranges.append((value, value))
            except ValueError as exc:
                raise InputError(
                    f"{what}: return code {entry!r} is not an IPv4 address, range (127.0.0.2-127.0.0.11) "
                    f"or network (127.0.1.0/24): {exc}"
                ) from None
            texts.append(entry)
        return cls(ranges=tuple(ranges), text=tuple(texts))

    def __contains__(self, code: object) -> bool:
        try:
            value = int(ipaddress.IPv4Address(str(code)))
        except ValueError:
            return False
        return any(low <= value <= high for low, high in self.ranges)


# What well-known error codes mean, for messages an operator can act on.
ERROR_CODE_MEANINGS = {
    "127.255.255.252": "typo in the DNSBL zone name",
    "127.255.255.254": "query through a public/open resolver, refused by the list "
    "(use your own recursive resolver or a Spamhaus DQS key)",
    "127.255.255.255": "too many queries from this resolver (rate limited)",
    "127.0.0.255": "query refused (resolver blocked or over the free query limit)",
}

# Lists that have shut down. Several of them later answered "listed" for every query, which
# makes every address on the internet look blacklisted. Refused with this reason.
SHUT_DOWN_ZONES = {
    "sorbs.net": "SORBS was shut down by Proofpoint in 2024",
    "ahbl.org": "AHBL shut down in 2015 and then answered 'listed' for every query",
    "njabl.org": "NJABL shut down in 2013",
    "dsbl.org": "DSBL shut down in 2009",
    "spamcannibal.org": "SpamCannibal shut down; its domain no longer runs a list",
}


@dataclass(frozen=True)
class DnsblList:
    zone: str
    kind: str = "ip"
    name: str = ""
    ipv4: bool = True
    ipv6: bool = False
    listed: CodeSet = field(default_factory=lambda: CodeSet.parse(["127.0.0.2-127.255.255.254"], "default"))
    errors: CodeSet = field(default_factory=lambda: CodeSet.parse(["127.255.255.0/24"], "default"))
    selftest: bool = True
    test_listed: str = ""
    test_clean: str = ""
    test_listed6: str = ""
    test_clean6: str = ""
    allowlist: bool = False
    dqs_zone: str = ""
    nameservers: tuple[Nameserver, ...] = ()

    @property
    def label(self) -> str:
        """The zone as shown to people: never contains a DQS key."""
        return self.zone.rstrip(".")

    def test_points(self, version: int = 4) -> tuple[str, str]:
        """(must be listed, must not be listed) for targets of this IP version (ignored by domain
        lists): a listing of an IPv6 address is only trusted when the list answers its IPv6 points."""
        if self.kind == "domain":
            return (self.test_listed or DOMAIN_TEST_LISTED, self.test_clean or DOMAIN_TEST_CLEAN)
        if version == 6:
            return (self.test_listed6 or IPV6_TEST_LISTED, self.test_clean6 or IPV6_TEST_CLEAN)
        return (self.test_listed or IPV4_TEST_LISTED, self.test_clean or IPV4_TEST_CLEAN)

    def query_zone(self, dqs_key: str = "") -> str:
        """The zone actually asked: `<key>.<dqs_zone>` with a DQS key, the public zone otherwise."""
        if dqs_key and self.dqs_zone:
            return f"{dqs_key}.{self.dqs_zone}"
        return self.zone

    def applies_to(self, kind: str, version: int) -> bool:
        if kind != self.kind:
            return False
        return kind == "domain" or (self.ipv4 if version == 4 else self.ipv6)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> DnsblList:
        if not isinstance(data, Mapping):
            raise InputError(f"a DNSBL list entry must be a mapping with at least 'zone', got {data!r}")
        known = {
            "zone",
            "kind",
            "name",
            "ipv4",
            "ipv6",
            "listed",
            "errors",
            "selftest",
            "test_listed",
            "test_clean",
            "test_listed6",
            "test_clean6",
            "allowlist",
            "dqs_zone",
            "nameservers",
            "notes",
        }
        unknown = sorted(set(data) - known)
        if "zone" not in data:
            raise InputError(f"DNSBL list entry {dict(data)!r} has no 'zone'")
        raw_zone = str(data["zone"])
        if unknown:
            raise InputError(
                f"DNSBL list {raw_zone}: unknown setting(s) {', '.join(unknown)}; "
                f"known: {', '.join(sorted(known))}"
            )
        zone = normalize_zone(raw_zone)
        refuse_shut_down(zone)
        kind = str(data.get("kind", "ip"))
        if kind not in KINDS:
            raise InputError(f"DNSBL list {raw_zone}: kind must be 'ip' or 'domain', not {kind!r}")
        defaults = cls(zone=zone)
        what = f"DNSBL list {raw_zone}"
        listed = CodeSet.parse(data["listed"], what) if "listed" in data else defaults.listed
        errors = CodeSet.parse(data["errors"], what) if "errors" in data else defaults.errors
        nameservers = data.get("nameservers") or ()
        if isinstance(nameservers, str):
            nameservers = [nameservers]
        try:
            parsed_ns = tuple(parse_nameserver(ns) for ns in nameservers)
        except InputError as exc:
            raise InputError(f"{what}: {exc}") from None
        return cls(
            zone=zone,
            kind=kind,
            name=str(data.get("name") or zone.rstrip(".")),
            **_families(data, kind, what),
            listed=listed,
            errors=errors,
            selftest=_bool(data.get("selftest", True), what, "selftest"),
            **_test_points(data, kind, what),
            allowlist=_bool(data.get("allowlist", False), what, "allowlist"),
            dqs_zone=normalize_zone(str(data["dqs_zone"])) if data.get("dqs_zone") else "",
            nameservers=parsed_ns,
        )


def _bool(value: Any, what: str, key: str) -> bool:
    if isinstance(value, bool):
        return value
    raise InputError(f"{what}: {key} must be true or false, not {value!r}")


IP_ONLY_KEYS = ("ipv4", "ipv6", "test_listed6", "test_clean6")


def _families(data: Mapping[str, Any], kind: str, what: str) -> dict[str, bool]:
    """ipv4/ipv6 of an IP list; a domain list has no address family, so the keys are refused."""
    if kind == "domain":
        given = [key for key in IP_ONLY_KEYS if key in data]
        if given:
            raise InputError(
                f"{what}: {', '.join(given)} apply to IP lists only; remove them from this domain list"
            )
        return {}
    ipv4 = _bool(data.get("ipv4", True), what, "ipv4")
    ipv6 = _bool(data.get("ipv6", False), what, "ipv6")
    if not (ipv4 or ipv6):
        raise InputError(f"{what}: serves neither IPv4 nor IPv6; set ipv4: true and/or ipv6: true")
    return {"ipv4": ipv4, "ipv6": ipv6}


def _test_points(data: Mapping[str, Any], kind: str, what: str) -> dict[str, str]:
    """test_listed/test_clean (IPv4 or domain) and test_listed6/test_clean6 (IPv6), checked here so
    that an IPv6 point given as an IPv4 one (the old hand-made workaround for IPv6-only lists) is
    refused with the fix instead of self-testing the list's IPv4 side with IPv6 names."""
    points = {key: str(data.get(key) or "").strip() for key in ("test_listed", "test_clean")}
    if kind == "domain":
        return points
    for key, value in points.items():
        if value and _ip_version(value) != 4:
            hint = (
                f"{key} is an IPv6 address: IPv6 test points go in {key}6 (RFC 5782 defaults "
                f"{IPV6_TEST_LISTED} / {IPV6_TEST_CLEAN}), and a list that serves only IPv6 says "
                "ipv4: false, ipv6: true"
                if _ip_version(value) == 6
                else f"{key} must be an IPv4 address such as {IPV4_TEST_LISTED}"
            )
            raise InputError(f"{what}: {hint}, not {value!r}")
    for key in ("test_listed6", "test_clean6"):
        value = str(data.get(key) or "").strip()
        if value and _ip_version(value) != 6:
            raise InputError(
                f"{what}: {key} must be an IPv6 address such as {IPV6_TEST_LISTED}, not {value!r}"
            )
        if value and data.get("ipv6") is not True:
            raise InputError(f"{what}: {key} is set but the list does not serve IPv6; add ipv6: true")
        # One spelling per point, so the self-test finds its answer under the name it asked.
        points[key] = ipaddress.IPv6Address(value).compressed if value else ""
    return points


def _ip_version(text: str) -> int:
    try:
        return ipaddress.ip_address(text).version
    except ValueError:
        return 0


def refuse_shut_down(zone: str) -> None:
    labels = zone.rstrip(".").split(".")
    for i in range(len(labels) - 1):
        reason = SHUT_DOWN_ZONES.get(".".join(labels[i:]))
        if reason:
            raise InputError(f"DNSBL list {zone.rstrip('.')}: {reason}; remove it from the checked lists")


def _spamhaus(zone: str, kind: str, listed: list[str], dqs: str, **extra: Any) -> dict[str, Any]:
    return {
        "zone": zone,
        "kind": kind,
        "listed": listed,
        "errors": ["127.255.255.0/24", *extra.pop("more_errors", [])],
        "dqs_zone": dqs,
        **extra,
    }


# The curated default set: lists that are run today and are used by large receivers. Each is free
# for low-volume use from your own resolver. Every entry names its own test points and return
# codes as the list documents them; where a list does not document one, the RFC 5782 point is
# written out and roles/dnsbl_monitor/README.md ("Where the list defaults come from") says which
# fact came from where. A list is asked about IPv6 addresses only where it documents IPv6 queries.
# Override with `lists` (replace) or `extra_lists`/`disabled_lists` (adjust) in the settings.
DEFAULT_LIST_DATA: tuple[dict[str, Any], ...] = (
    _spamhaus(
        "zen.spamhaus.org",
        "ip",
        # .2-.11 are the SBL/CSS/XBL/DROP/PBL codes (some documented as "currently unused"),
        # .30 is the BCL.
        ["127.0.0.2-127.0.0.11", "127.0.0.30"],
        "zen.dq.spamhaus.net",
        name="Spamhaus ZEN",
        ipv6=True,
        test_listed=IPV4_TEST_LISTED,
        test_clean=IPV4_TEST_CLEAN,
        test_listed6=IPV6_TEST_LISTED,
        test_clean6=IPV6_TEST_CLEAN,
    ),
    _spamhaus(
        "dbl.spamhaus.org",
        "domain",
        ["127.0.1.2", "127.0.1.4-127.0.1.6", "127.0.1.102-127.0.1.106"],
        "dbl.dq.spamhaus.net",
        # 127.0.1.255: "IP queries not allowed" - an error of the query, never a listing.
        more_errors=["127.0.1.255"],
        name="Spamhaus DBL",
        test_listed="dbltest.com",
        test_clean=DOMAIN_TEST_CLEAN,
    ),
    {
        "zone": "b.barracudacentral.org",
        "name": "Barracuda BRBL",
        "listed": ["127.0.0.2"],
        "test_listed": IPV4_TEST_LISTED,
        "test_clean": IPV4_TEST_CLEAN,
    },
    {
        "zone": "bl.spamcop.net",
        "name": "SpamCop",
        "listed": ["127.0.0.2"],
        "test_listed": IPV4_TEST_LISTED,
        "test_clean": IPV4_TEST_CLEAN,
    },
    {
        "zone": "psbl.surriel.com",
        "name": "PSBL",
        "listed": ["127.0.0.2"],
        "test_listed": IPV4_TEST_LISTED,
        "test_clean": IPV4_TEST_CLEAN,
    },
    {
        "zone": "bl.mailspike.net",
        "name": "Mailspike BL",
        # 127.0.0.2 = the zero-hour list (z.mailspike.net); .10-.12 = reputation levels L5-L3,
        # the only levels bl.mailspike.net carries.
        "listed": ["127.0.0.2", "127.0.0.10-127.0.0.12"],
        "test_listed": IPV4_TEST_LISTED,
        "test_clean": IPV4_TEST_CLEAN,
    },
    {
        "zone": "list.dnswl.org",
        "name": "DNSWL (allowlist)",
        "allowlist": True,
        "ipv6": True,
        "listed": ["127.0.0.0-127.0.255.254"],
        "errors": ["127.0.0.255"],
        # No documented test points were found for DNSWL: an allowlist hit is never counted,
        # so it is not self-tested rather than tested against guessed points.
        "selftest": False,
    },
)


def default_lists() -> list[DnsblList]:
    return [DnsblList.from_mapping(item) for item in DEFAULT_LIST_DATA]


@dataclass(frozen=True)
class Settings:
    """Everything one check needs besides its targets: lists, resolvers, timing, DQS key."""

    lists: tuple[DnsblList, ...]
    nameservers: tuple[Nameserver, ...] = ()
    timeout: float = 4.0
    retries: int = 1
    dqs_key: str = ""
    ips: tuple[str, ...] = ()
    domains: tuple[str, ...] = ()

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> Settings:
        known = {
            "lists",
            "extra_lists",
            "disabled_lists",
            "nameservers",
            "timeout",
            "retries",
            "dqs_key",
            "ips",
            "domains",
        }
        unknown = sorted(k for k in set(data) - known if not str(k).startswith("_"))  # "_comment" etc.
        if unknown:
            raise InputError(
                f"unknown DNSBL setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        if data.get("lists"):
            lists = [DnsblList.from_mapping(item) for item in _as_list(data["lists"], "lists")]
        else:
            lists = default_lists()
        lists += [DnsblList.from_mapping(item) for item in _as_list(data.get("extra_lists"), "extra_lists")]
        disabled = {normalize_zone(z) for z in _as_list(data.get("disabled_lists"), "disabled_lists")}
        lists = [item for item in lists if item.zone not in disabled]
        zones = [item.zone for item in lists]
        duplicates = sorted({z for z in zones if zones.count(z) > 1})
        if duplicates:
            raise InputError(
                f"DNSBL list(s) configured twice: {', '.join(z.rstrip('.') for z in duplicates)}"
            )
        if not lists:
            raise InputError("no DNSBL list left to check: set 'lists' or stop disabling all of them")
        timeout = data.get("timeout", 4.0)
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0.1 <= timeout <= 60:
            raise InputError(f"timeout must be a number of seconds from 0.1 to 60, not {timeout!r}")
        retries = data.get("retries", 1)
        if isinstance(retries, bool) or not isinstance(retries, int) or not 0 <= retries <= 5:
            raise InputError(f"retries must be a whole number from 0 to 5, not {retries!r}")
        dqs_key = str(data.get("dqs_key") or "").strip().lower()
        if dqs_key and not re.fullmatch(r"[a-z0-9]{8,64}", dqs_key):
            raise InputError("dqs_key must be the letters and digits of your Spamhaus DQS key, nothing else")
        return cls(
            lists=tuple(lists),
            nameservers=tuple(
                parse_nameserver(ns) for ns in _as_list(data.get("nameservers"), "nameservers")
            ),
            timeout=float(timeout),
            retries=retries,
            dqs_key=dqs_key,
            ips=tuple(str(x) for x in _as_list(data.get("ips"), "ips")),
            domains=tuple(str(x) for x in _as_list(data.get("domains"), "domains")),
        )


def _as_list(value: Any, key: str) -> list[Any]:
    if value is None or value == "":
        return []
    if isinstance(value, list | tuple):
        return list(value)
    raise InputError(f"{key} must be a list, not {value!r}")
