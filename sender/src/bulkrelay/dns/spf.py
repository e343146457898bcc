"""SPF: evaluate check_host() per RFC 7208 with pyspf, asked through a bulkrelay resolver.

pyspf (the RFC 7208 reference implementation) does the evaluation: every mechanism and
modifier, macros, the 10-lookup and 2-void-lookup limits, permerror on multiple records. Its
DNS goes through a module-level ``spf.DNSLookup`` function; :func:`evaluate` installs a
dispatcher there once and routes each evaluation to the resolver it was given (a context
variable, so concurrent evaluations with different resolvers do not mix). Nothing is ever
asked of the system resolver by an evaluation.

Also here: small SPF text helpers shared with the record generator (find the v=spf1 records,
split terms, count DNS-lookup terms statically) and :func:`merge_spf`, which adds the relay's
addresses to a live record; :func:`check` uses it to say which record to publish.
"""

from __future__ import annotations

import contextvars
import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any

from bulkrelay.dns import result as res
from bulkrelay.dns.rdata import TXT_STRING_MAX, RecordError, split_txt
from bulkrelay.dns.resolver import DnsSource, relative

try:  # pyspf: python3-spf on Debian, pyspf on PyPI
    import spf as _pyspf
except ImportError:  # pragma: no cover - reported by evaluate()
    _pyspf = None

MAX_LOOKUPS = 10
MAX_VOID_LOOKUPS = 2
LOOKUP_MECHANISMS = ("include", "a", "mx", "ptr", "exists")
RE_SPF_START = re.compile(r"^v=spf1(\s|$)", re.IGNORECASE)
SPF_UDP_SAFE = 450  # RFC 7208 3.4: keep the answer small enough for one UDP packet

_source: contextvars.ContextVar[DnsSource | None] = contextvars.ContextVar(
    "bulkrelay_spf_source", default=None
)
_installed = False


class SpfUnavailable(RuntimeError):
    """pyspf is not importable."""


def _dispatch_lookup(name: str, qtype: str, strict: Any = True, timeout: Any = None) -> list[tuple[Any, Any]]:
    """Stands in for ``spf.DNSLookup``: answers from the resolver bound to this evaluation."""
    source = _source.get()
    if source is None:
        raise _pyspf.TempError("DNS: no bulkrelay resolver bound to this SPF evaluation")
    answer = source.query(name, qtype)
    if answer.failed:
        raise _pyspf.TempError(f"DNS {answer.error}")
    return [((name, qtype), value) for value in answer.records]


def _install() -> None:
    global _installed  # noqa: PLW0603 - one-time hook into pyspf's module-level lookup
    if _pyspf is None:
        raise SpfUnavailable(
            "pyspf is not installed: pip install pyspf==2.0.14 (Debian: apt install python3-spf)"
        )
    if not _installed:
        _pyspf.DNSLookup = _dispatch_lookup
        _installed = True


@dataclass
class SpfEvaluation:
    """What check_host() said: result (pass, fail, softfail, neutral, none, permerror,
    temperror), the SMTP code pyspf would use, the explanation and the lookup counts."""

    result: str
    code: int
    explanation: str
    lookups: int
    void_lookups: int


def evaluate(
    source: DnsSource, ip: str, sender: str, helo: str, *, timeout: float = 20.0, receiver: str = ""
) -> SpfEvaluation:
    """check_host(ip, domain of ``sender``, sender) with ``helo`` as the HELO identity.

    An empty ``sender`` evaluates the HELO identity (postmaster@helo), as RFC 7208 2.3 says.
    """
    _install()
    token = _source.set(source)
    try:
        query = _pyspf.query(i=ip, s=sender, h=helo, receiver=receiver or None, timeout=timeout)
        result, code, explanation = query.check()
    finally:
        _source.reset(token)
    return SpfEvaluation(result, int(code), explanation, int(query.lookups), int(query.void_lookups))


def spf_records(texts: list[str]) -> list[str]:
    """The v=spf1 records among a name's TXT strings (RFC 7208 4.5)."""
    return [t for t in texts if RE_SPF_START.match(t.strip())]


def terms(record: str) -> list[str]:
    """The terms of an SPF record after ``v=spf1``."""
    return record.split()[1:]


def _term_name(term: str) -> str:
    body = term.lstrip("+-~?").lower()
    return re.split(r"[:/=]", body, maxsplit=1)[0]


def lookup_terms(record: str) -> list[str]:
    """Terms that cost a DNS lookup (RFC 7208 4.6.4): include, a, mx, ptr, exists, redirect."""
    return [t for t in terms(record) if _term_name(t) in (*LOOKUP_MECHANISMS, "redirect")]


def authorises_statically(record: str, ip: str) -> bool:
    """True when an ip4:/ip6: term of the record itself (no lookups) covers ``ip``."""
    addr = ipaddress.ip_address(ip)
    for term in terms(record):
        body = term.lstrip("+")
        if term[:1] in "-~?":
            continue
        name = _term_name(body)
        if name not in ("ip4", "ip6"):
            continue
        try:
            net = ipaddress.ip_network(body.split(":", 1)[1], strict=False)
        except ValueError:
            continue
        if addr.version == net.version and addr in net:
            return True
    return False


@dataclass
class LookupCount:
    """Static count of the DNS-lookup terms of a record and of everything it includes."""

    lookups: int = 0
    void_lookups: int = 0
    unresolved: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def count_lookups(source: DnsSource, domain: str, record: str, _depth: int = 0) -> LookupCount:
    """Walk include:/redirect= through DNS and count lookup terms and void lookups.

    Macros cannot be expanded without a connection, so terms with ``%{`` count one lookup and
    are listed in ``unresolved``. Used to warn before publishing a merged record.
    """
    count = LookupCount()
    if _depth > 10:
        count.problems.append(f"include/redirect nesting deeper than 10 at {domain}")
        return count
    for term in lookup_terms(record):
        count.lookups += 1
        name = _term_name(term)
        if name not in ("include", "redirect"):
            if name in ("a", "mx") and ":" in term:
                target = term.split(":", 1)[1].split("/")[0]
                if "%{" in target:
                    count.unresolved.append(term)
                    continue
                answer = source.query(target, "MX" if name == "mx" else "A")
                if answer.absent and name == "a":
                    answer = source.query(target, "AAAA")
                if answer.absent:
                    count.void_lookups += 1
            continue
        target = term.split("=" if name == "redirect" else ":", 1)[1]
        if "%{" in target:
            count.unresolved.append(term)
            continue
        answer = source.query(target, "TXT")
        if answer.failed:
            count.problems.append(f"could not read SPF of {target}: {answer.error}")
            continue
        found = spf_records(answer.texts()) if answer.ok else []
        if not found:
            count.void_lookups += int(answer.absent)
            count.problems.append(f"{term} in {domain} points to {target}, which has no SPF record")
            continue
        inner = count_lookups(source, target, found[0], _depth + 1)
        count.lookups += inner.lookups
        count.void_lookups += inner.void_lookups
        count.unresolved += inner.unresolved
        count.problems += inner.problems
    return count


@dataclass
class SpfMerge:
    """A merged SPF record and what happened on the way."""

    record: str
    changed: bool
    added: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def merge_spf(
    existing: list[str],
    ipv4: str = "",
    ipv6: str = "",
    *,
    new_terms: tuple[str, ...] | list[str] = ("mx",),
    new_all: str = "~all",
    domain: str = "",
) -> SpfMerge:
    """Add the relay's ``ip4:``/``ip6:`` to the live SPF record instead of replacing it.

    ``existing`` is the list of v=spf1 records now published (other TXT records removed).
    The new terms go right after ``v=spf1`` so they match before any ``all``/``redirect``;
    an address already covered by an ip4:/ip6: term (network included) is not added again.
    With no record yet, the result is ``v=spf1 <ip terms> <new_terms> <new_all>``.
    """
    where = f" of {domain}" if domain else ""
    warnings: list[str] = []
    ips = [(v, ip) for v, ip in (("ip4", ipv4), ("ip6", ipv6)) if ip]
    for version, ip in ips:
        if ipaddress.ip_address(ip).version != int(version[-1]):
            raise RecordError(f"{ip} is not an IPv{version[-1]} address (check bulkrelay_ip{version[-1]}v)")
    records = [r.strip() for r in existing if RE_SPF_START.match(r.strip())]
    if len(records) > 1:
        warnings.append(
            f"{len(records)} SPF records{where}: receivers answer permerror; the relay was merged into the "
            f"first, delete the others: {records[1:]}"
        )
    if not records:
        base_terms: list[str] = []
        tail = [*new_terms, new_all]
        changed = True
    else:
        base_terms = terms(records[0])
        tail = []
        changed = False
    added = []
    current = "v=spf1 " + " ".join(base_terms)
    for version, ip in ips:
        if records and authorises_statically(current, ip):
            continue
        term = f"{version}:{ip}"
        added.append(term)
    if added:
        changed = True
    record = " ".join(["v=spf1", *added, *base_terms, *tail]).strip()
    lookups = len(lookup_terms(record))
    if lookups > MAX_LOOKUPS:
        warnings.append(
            f"SPF{where} has {lookups} DNS-lookup terms in itself, more than {MAX_LOOKUPS}: permerror"
        )
    size = len(record.encode("utf-8"))
    if size > TXT_STRING_MAX:
        warnings.append(
            f"SPF{where} is {size} bytes: published as {len(split_txt(record))} strings of at most "
            "255 bytes; some DNS web interfaces cut it, check the result"
        )
    if size > SPF_UDP_SAFE:
        warnings.append(f"SPF{where} is {size} bytes, over {SPF_UDP_SAFE}: answers may need TCP")
    return SpfMerge(record, changed, added, warnings)


def lookup_warnings(source: DnsSource, domain: str, record: str) -> list[str]:
    """What a receiver would refuse in ``record`` (to be published at ``domain``), counted live:
    too many DNS lookups or void lookups, and the include/redirect targets without SPF."""
    count = count_lookups(source, domain, record)
    warnings = []
    if count.lookups > MAX_LOOKUPS:
        warnings.append(f"SPF of {domain} needs {count.lookups} DNS lookups (limit 10): receivers permerror")
    if count.void_lookups > MAX_VOID_LOOKUPS:
        warnings.append(f"SPF of {domain} has {count.void_lookups} void lookups (limit 2): permerror")
    return warnings + count.problems


def check(
    source: DnsSource,
    domain: str,
    ip: str,
    *,
    helo: str = "",
    sender: str = "",
    expect: str = "pass",
    timeout: float = 20.0,
) -> res.CheckResult:
    """Does ``domain`` authorise ``ip`` (sending with HELO ``helo``)? Status pass when the
    check_host() result equals ``expect``; error on temperror (could not tell)."""
    domain = relative(domain)
    sender = sender or f"postmaster@{domain}"
    helo = relative(helo) if helo else domain
    version = "ip6" if ipaddress.ip_address(ip).version == 6 else "ip4"
    txt = source.query(domain, "TXT")
    records = spf_records(txt.texts()) if txt.ok else []
    ev = evaluate(source, ip, sender, helo, timeout=timeout)
    details = {
        "domain": domain,
        "ip": ip,
        "helo": helo,
        "sender": sender,
        "result": ev.result,
        "explanation": ev.explanation,
        "lookups": ev.lookups,
        "void_lookups": ev.void_lookups,
        "records": records,
        "expected": expect,
    }
    outcome = res.Outcome("spf", domain, details)
    if len(records) > 1:
        outcome.warnings.append(f"{domain} has {len(records)} SPF records; receivers return permerror")
    if ev.lookups >= MAX_LOOKUPS - 2 and ev.result != "permerror":
        outcome.warnings.append(
            f"{ev.lookups} of at most {MAX_LOOKUPS} DNS lookups used; one more include may break SPF"
        )
    if ev.result == "temperror":
        return outcome.error(f"could not tell: {ev.explanation}")
    if ev.result == expect:
        return outcome.passed(f"SPF of {domain} gives {ev.result} for {ip} ({ev.lookups} lookups)")
    if ev.result == "none":
        wanted = merge_spf([], ipv4=ip if version == "ip4" else "", ipv6=ip if version == "ip6" else "")
        fix = f'publish TXT at {domain}: "{wanted.record}"'
    elif ev.result == "permerror":
        fix = f"repair the SPF of {domain} ({ev.explanation}); keep one v=spf1 record with at most 10 lookups"
    else:
        merged = merge_spf(
            records[:1], ipv4=ip if version == "ip4" else "", ipv6=ip if version == "ip6" else ""
        )
        fix = f'set the SPF TXT of {domain} to "{merged.record}" (adds {version}:{ip})'
    message = f"SPF of {domain} gives {ev.result} for {ip}, expected {expect}"
    if ev.explanation:
        message += f" ({ev.explanation})"
    return outcome.fail(message, fix=fix)
