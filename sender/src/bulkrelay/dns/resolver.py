"""The one DNS resolver helper every bulkrelay check uses.

Rules it enforces (see roles/dns_records/README.md and PITFALLS.md):

* every name is asked absolutely (a trailing dot is added), search domains are never used;
* nameservers are explicit (``IP`` or ``IP:port``, IPv4 or IPv6, ``[v6]:port``); an empty list
  means the system resolver's nameservers, still without search domains;
* an answer is one of four states: ``ok`` (records), ``nxdomain`` (the name does not exist),
  ``nodata`` (the name exists, no records of that type) or ``error`` (timeout, SERVFAIL,
  REFUSED, network error: *could not tell*). Only the first three are facts about the zone.

Answers carry plain Python values (see :func:`normalize_rdata`) so tests can feed a
:class:`StaticResolver` built from a dict instead of a live server.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import dns.exception
import dns.message
import dns.name
import dns.rdatatype
import dns.reversename

OK = "ok"
NXDOMAIN = "nxdomain"
NODATA = "nodata"
ERROR = "error"

DEFAULT_TIMEOUT = 5.0


class NameserverError(ValueError):
    """A nameserver string that is not ``IP``, ``IP:port`` or ``[IPv6]:port``."""


@dataclass(frozen=True)
class Nameserver:
    """One DNS server to ask: an IP address (v4 or v6) and a UDP/TCP port."""

    address: str
    port: int = 53

    def __str__(self) -> str:
        if self.port == 53:
            return self.address
        if ":" in self.address:
            return f"[{self.address}]:{self.port}"
        return f"{self.address}:{self.port}"


def parse_nameserver(text: str) -> Nameserver:
    """Parse ``"198.51.100.53"``, ``"198.51.100.53:5300"``, ``"2001:db8::53"`` or
    ``"[2001:db8::53]:5300"`` into a :class:`Nameserver`.

    Raises :class:`NameserverError` with a message that names the bad value and the accepted
    forms. Host names are refused on purpose: resolving the resolver would need a resolver.
    """
    raw = str(text).strip()
    hint = "use an IP address, IP:port or [IPv6]:port, e.g. 198.51.100.53:5300"
    if not raw:
        raise NameserverError(f"empty nameserver; {hint}")
    address, port_text = raw, ""
    if raw.startswith("["):
        close = raw.find("]")
        if close < 0:
            raise NameserverError(f"nameserver {raw!r} has no closing ']'; {hint}")
        address, rest = raw[1:close], raw[close + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise NameserverError(f"nameserver {raw!r}: unexpected {rest!r} after ']'; {hint}")
            port_text = rest[1:]
    elif raw.count(":") == 1:
        address, port_text = raw.split(":")
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        raise NameserverError(f"nameserver {raw!r} is not an IP address; {hint}") from None
    port = 53
    if port_text:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise NameserverError(f"nameserver {raw!r} has an invalid port {port_text!r}; {hint}")
        port = int(port_text)
    return Nameserver(str(parsed), port)


def parse_nameservers(items: Iterable[str] | str | None) -> list[Nameserver]:
    """Parse a list (or a comma/space separated string) of nameservers; ``None``/empty -> []."""
    if items is None:
        return []
    if isinstance(items, str):
        items = items.replace(",", " ").split()
    return [parse_nameserver(item) for item in items]


def absolute(name: str) -> str:
    """``example.test`` -> ``example.test.`` (lower case, exactly one trailing dot)."""
    name = str(name).strip().lower()
    if not name or name == ".":
        return "."
    return name.rstrip(".") + "."


def relative(name: str) -> str:
    """``Example.TEST.`` -> ``example.test`` (the form used in messages and comparisons)."""
    return str(name).strip().lower().rstrip(".")


def reverse_name(ip: str) -> str:
    """The PTR owner name of an IPv4 or IPv6 address, absolute."""
    return dns.reversename.from_address(str(ipaddress.ip_address(ip))).to_text()


@dataclass
class Answer:
    """The outcome of one query. ``records`` holds normalized values (see normalize_rdata)."""

    name: str
    rdtype: str
    status: str
    records: list[Any] = field(default_factory=list)
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.status == OK

    @property
    def absent(self) -> bool:
        """True only when DNS said so (NXDOMAIN or NODATA), never on a failure."""
        return self.status in (NXDOMAIN, NODATA)

    @property
    def failed(self) -> bool:
        return self.status == ERROR

    def texts(self) -> list[str]:
        """TXT answers as strings, each record's character-strings concatenated (RFC 7208 3.3)."""
        return [b"".join(parts).decode("utf-8", "replace") for parts in self.records]

    def describe(self) -> str:
        """Short human text for messages: what DNS said about this name/type."""
        if self.status == NXDOMAIN:
            return f"{self.name} does not exist (NXDOMAIN)"
        if self.status == NODATA:
            return f"{self.name} has no {self.rdtype} record"
        if self.status == ERROR:
            return f"could not tell: {self.rdtype} query for {self.name} failed ({self.error})"
        return f"{self.name} {self.rdtype}: {', '.join(map(str, self.records))}"


class DnsSource(Protocol):
    """What checks need from a resolver (the live Resolver and StaticResolver both fit)."""

    def query(self, name: str, rdtype: str) -> Answer: ...


def normalize_rdata(rdata: Any) -> Any:
    """dnspython rdata -> plain value: A/AAAA address str, MX (pref, host), PTR/CNAME/NS host,
    TXT tuple of bytes (the character-strings), anything else its presentation text."""
    rdtype = dns.rdatatype.to_text(rdata.rdtype)
    if rdtype in ("A", "AAAA"):
        return rdata.address
    if rdtype == "MX":
        return (int(rdata.preference), relative(rdata.exchange.to_text()))
    if rdtype in ("PTR", "CNAME", "NS"):
        return relative(rdata.target.to_text())
    if rdtype in ("TXT", "SPF"):
        return tuple(rdata.strings)
    return rdata.to_text()


class Resolver:
    """Live DNS through dnspython, with the rules in the module docstring.

    ``nameservers``: list of strings or Nameserver; empty = the system's nameservers (read
    from /etc/resolv.conf), still asked without search domains. ``timeout``: seconds for the
    whole query (all servers and retries).
    """

    def __init__(self, nameservers: Iterable[str | Nameserver] = (), timeout: float = DEFAULT_TIMEOUT):
        # dns.resolver costs ~9 ms to import; check_dnsbl reads Nameserver from here and never resolves
        import dns.resolver  # noqa: PLC0415

        servers = [ns if isinstance(ns, Nameserver) else parse_nameserver(ns) for ns in nameservers]
        if timeout is None or float(timeout) <= 0:
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        self.timeout = float(timeout)
        if servers:
            self._resolver = dns.resolver.Resolver(configure=False)
            # Addresses plus a port map: the form both Debian 12's dnspython 2.3 (on relays) and
            # newer releases accept.
            self._resolver.nameservers = [s.address for s in servers]
            self._resolver.nameserver_ports = {s.address: s.port for s in servers}
        else:
            self._resolver = dns.resolver.Resolver(configure=True)
        self._resolver.search = []
        self._resolver.use_search_by_default = False
        self._resolver.domain = dns.name.root
        self._resolver.lifetime = self.timeout
        self._resolver.timeout = min(self.timeout, 2.0)
        self._resolver.cache = None
        self.nameservers = servers

    def query(self, name: str, rdtype: str) -> Answer:
        qname = absolute(name)
        rdtype = rdtype.upper()
        import dns.resolver  # noqa: PLC0415 - see __init__

        try:
            rrset = self._resolver.resolve(qname, rdtype, search=False, raise_on_no_answer=True)
        except dns.resolver.NXDOMAIN:
            return Answer(qname, rdtype, NXDOMAIN)
        except dns.resolver.NoAnswer:
            return Answer(qname, rdtype, NODATA)
        except dns.resolver.LifetimeTimeout as exc:
            return Answer(qname, rdtype, ERROR, error=f"timeout after {self.timeout:g}s ({exc})")
        except dns.resolver.NoNameservers as exc:
            return Answer(qname, rdtype, ERROR, error=f"SERVFAIL/REFUSED from every nameserver ({exc})")
        except (dns.exception.DNSException, OSError) as exc:
            return Answer(qname, rdtype, ERROR, error=f"{type(exc).__name__}: {exc}")
        return Answer(qname, rdtype, OK, [normalize_rdata(r) for r in rrset])


class StaticResolver:
    """A resolver answering from a dict, for unit tests and offline evaluation.

    ``zone`` maps names to lists of ``(rdtype, value)``; values use the normalized forms of
    :func:`normalize_rdata` (TXT may be a str, a list of str or a tuple of bytes). The special
    entry ``("TIMEOUT", None)`` makes queries for that name fail (status ``error``) for every
    type it has no records of (the RFC 7208 suite's convention).
    CNAME entries are followed. Every query is recorded in ``self.log``.
    """

    def __init__(self, zone: Mapping[str, Iterable[tuple[str, Any]]]):
        self.zone: dict[str, list[tuple[str, Any]]] = {}
        for name, entries in zone.items():
            self.zone.setdefault(relative(name), []).extend((t.upper(), v) for t, v in entries)
        self.log: list[tuple[str, str]] = []

    @staticmethod
    def _txt(value: Any) -> tuple[bytes, ...]:
        if isinstance(value, tuple) and all(isinstance(p, bytes) for p in value):
            return value
        parts = [value] if isinstance(value, str | bytes) else list(value)
        return tuple(p if isinstance(p, bytes) else str(p).encode("utf-8") for p in parts)

    def query(self, name: str, rdtype: str, _depth: int = 0) -> Answer:
        rdtype = rdtype.upper()
        qname = absolute(name)
        self.log.append((relative(name), rdtype))
        entries = self.zone.get(relative(name))
        if entries is None:
            return Answer(qname, rdtype, NXDOMAIN)
        found = [v for t, v in entries if t == rdtype]
        if not found and any(t == "TIMEOUT" for t, _ in entries):
            return Answer(qname, rdtype, ERROR, error="timeout (static)")
        if not found and rdtype != "CNAME":
            cnames = [v for t, v in entries if t == "CNAME"]
            if cnames and _depth < 10:
                answer = self.query(cnames[0], rdtype, _depth + 1)
                return Answer(qname, rdtype, answer.status, answer.records, answer.error)
        if not found:
            return Answer(qname, rdtype, NODATA)
        if rdtype in ("TXT", "SPF"):
            found = [self._txt(v) for v in found]
        elif rdtype in ("PTR", "CNAME", "NS"):
            found = [relative(v) for v in found]
        elif rdtype == "MX":
            found = [(int(p), relative(h)) for p, h in found]
        return Answer(qname, rdtype, OK, found)


def make_resolver(
    nameservers: Iterable[str] | str | None = None, timeout: float = DEFAULT_TIMEOUT
) -> Resolver:
    """The usual way in: parse the nameserver strings and build a live Resolver."""
    return Resolver(parse_nameservers(nameservers), timeout)


def debug_message(name: str, rdtype: str) -> str:  # pragma: no cover - operator aid
    """The wire query as text (for `bulkrelay dns` debug output)."""
    return dns.message.make_query(absolute(name), rdtype).to_text()
