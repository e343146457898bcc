"""The one DNSBL checker: every list asked for every target, in parallel, within one deadline.

For each list the RFC 5782 self-test runs alongside the real queries (same deadline): the
"listed" test point must come back listed and the "clean" one must be NXDOMAIN. An IP list is
self-tested once per address family it is asked about, with that family's points: an answer for
an IPv6 address is trusted when the list answers its IPv6 points, whatever its IPv4 side does
(a list may serve only IPv6). A list that fails it (dead list answering for everything,
shut-down list, resolver refused) reports an error for all its queries of that family, never
"clean" and never "listed". Return codes a list defines as errors, and codes it does not define
at all, are errors too. TXT reasons are fetched for listings with what is left of the deadline;
a missing reason never undoes a listing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from bulkrelay.dnsbl.lists import ERROR_CODE_MEANINGS, DnsblList, Settings
from bulkrelay.dnsbl.lookup import Answer, Lookup, Transport, system_nameservers, udp_transport
from bulkrelay.dnsbl.names import Target, parse_target, query_name

# Extra time the whole check may take beyond one per-query timeout (task scheduling, TXT
# lookups of listings that answered early).
DEADLINE_MARGIN = 0.5


@dataclass
class QueryResult:
    """One list asked about one target."""

    target: str
    zone: str
    list_name: str
    outcome: str  # "listed" | "clean" | "error"
    allowlist: bool = False
    codes: tuple[str, ...] = ()
    reason: str = ""
    error: str = ""

    def as_dict(self) -> dict[str, object]:
        data: dict[str, object] = {"target": self.target, "zone": self.zone, "list": self.list_name}
        if self.outcome == "error":
            data["error"] = self.error
            if self.codes:
                data["codes"] = list(self.codes)
        else:
            data["codes"] = list(self.codes)
            data["reason"] = self.reason
        return data


@dataclass
class CheckResult:
    targets: list[str]
    lists: list[str]
    results: list[QueryResult] = field(default_factory=list)
    checked_at: str = ""
    elapsed: float = 0.0

    @property
    def listings(self) -> list[QueryResult]:
        return [r for r in self.results if r.outcome == "listed" and not r.allowlist]

    @property
    def allowlisted(self) -> list[QueryResult]:
        return [r for r in self.results if r.outcome == "listed" and r.allowlist]

    @property
    def errors(self) -> list[QueryResult]:
        return [r for r in self.results if r.outcome == "error" and not r.allowlist]

    @property
    def allowlist_errors(self) -> list[QueryResult]:
        return [r for r in self.results if r.outcome == "error" and r.allowlist]

    @property
    def checked(self) -> int:
        """(list, target) pairs of blocklists that gave a definite answer."""
        return sum(1 for r in self.results if r.outcome != "error" and not r.allowlist)

    def error_zones(self) -> dict[str, str]:
        """zone -> first error message, for lists that could not (fully) be checked."""
        zones: dict[str, str] = {}
        for r in self.errors:
            zones.setdefault(r.zone, r.error)
        return zones


def utc_now() -> datetime:
    return datetime.now(UTC)


def iso(ts: datetime) -> str:
    return ts.astimezone(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def explain_codes(codes: Sequence[str]) -> str:
    meanings = [f"{c} = {ERROR_CODE_MEANINGS[c]}" for c in codes if c in ERROR_CODE_MEANINGS]
    return "; ".join(meanings)


def judge(dnsbl: DnsblList, answer: Answer) -> tuple[str, tuple[str, ...], str]:
    """(outcome, codes, error) for one A answer of one list."""
    if answer.status == "nxdomain":
        return "clean", (), ""
    if answer.status != "found":
        return "error", (), answer.error
    codes = answer.values
    error_codes = [c for c in codes if c in dnsbl.errors]
    if error_codes:
        meaning = explain_codes(error_codes)
        return (
            "error",
            codes,
            f"answered error code {', '.join(error_codes)}" + (f" ({meaning})" if meaning else ""),
        )
    unknown = [c for c in codes if c not in dnsbl.listed]
    if unknown:
        return (
            "error",
            codes,
            f"answered {', '.join(unknown)}, which this list does not define as a listing "
            "(a parked or dead zone, or the list changed its codes: check its documentation)",
        )
    return "listed", codes, ""


def selftest_problem(dnsbl: DnsblList, listed_answer: Answer, clean_answer: Answer, version: int = 4) -> str:
    """Why a list failed its RFC 5782 self-test for targets of this IP version, or "" when it passed."""
    must_list, must_not = dnsbl.test_points(version)
    for point, answer in ((must_not, clean_answer), (must_list, listed_answer)):
        outcome, codes, error = judge(dnsbl, answer)
        if outcome == "error" and codes and not error.startswith("answered error code"):
            outcome = "listed"  # an undefined code for the must-not point: answering for everything
        if point == must_not and outcome == "listed":
            return (
                f"dead list: it lists the test point {must_not} that must never be listed "
                f"(answered {', '.join(codes)}), so it answers for everything"
            )
        if outcome == "error":
            return error  # a timeout, SERVFAIL/REFUSED or an error code (e.g. resolver refused)
        if point == must_list and outcome == "clean":
            return (
                f"self-test failed: test point {must_list} is not listed - the list is shut down, "
                "or it ignores this resolver"
            )
    return ""


class Checker:
    def __init__(
        self,
        settings: Settings,
        transport: Transport = udp_transport,
        clock: Callable[[], datetime] = utc_now,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.transport = transport
        self.clock = clock
        self.monotonic = monotonic
        self._default_ns = settings.nameservers

    def _lookup(self, dnsbl: DnsblList) -> Lookup:
        servers = dnsbl.nameservers or self._default_ns
        if not servers:
            servers = self._default_ns = system_nameservers()
        return Lookup(servers, self.settings.timeout, self.settings.retries, self.transport, self.monotonic)

    def run(self, targets: Sequence[str | Target]) -> CheckResult:
        return asyncio.run(self.check(targets))

    async def check(self, targets: Sequence[str | Target]) -> CheckResult:
        parsed = [t if isinstance(t, Target) else parse_target(t) for t in targets]
        started = self.monotonic()
        result = CheckResult(targets=[t.value for t in parsed], lists=[], checked_at=iso(self.clock()))
        jobs = [
            (dnsbl, [t for t in parsed if dnsbl.applies_to(t.kind, t.version)])
            for dnsbl in self.settings.lists
        ]
        jobs = [(dnsbl, applicable) for dnsbl, applicable in jobs if applicable]
        result.lists = [dnsbl.label for dnsbl, _ in jobs]

        probes: dict[tuple[str, str], _Probe] = {}
        for dnsbl, applicable in jobs:
            lookup = self._lookup(dnsbl)
            zone = dnsbl.query_zone(self.settings.dqs_key)
            if dnsbl.selftest:
                for version in {target.version for target in applicable}:
                    for point in dnsbl.test_points(version):
                        name = query_name(_test_target(dnsbl, point), zone)
                        probes[(dnsbl.zone, "selftest:" + point)] = _Probe(lookup, name, want_reason=False)
            for target in applicable:
                probes[(dnsbl.zone, target.value)] = _Probe(
                    lookup, query_name(target, zone), want_reason=True
                )
        await _run_until(list(probes.values()), self.settings.timeout + DEADLINE_MARGIN)

        for dnsbl, applicable in jobs:
            problems: dict[int, str] = {}
            for version in {target.version for target in applicable} if dnsbl.selftest else ():
                must_list, must_not = dnsbl.test_points(version)
                problems[version] = selftest_problem(
                    dnsbl,
                    probes[(dnsbl.zone, "selftest:" + must_list)].answer,
                    probes[(dnsbl.zone, "selftest:" + must_not)].answer,
                    version,
                )
            for target in applicable:
                problem = problems.get(target.version, "")
                probe = probes[(dnsbl.zone, target.value)]
                qr = QueryResult(
                    target=target.value,
                    zone=dnsbl.label,
                    list_name=dnsbl.name or dnsbl.label,
                    outcome="error",
                    allowlist=dnsbl.allowlist,
                    error=problem,
                )
                if not problem:
                    qr.outcome, qr.codes, qr.error = judge(dnsbl, probe.answer)
                    qr.reason = probe.reason if qr.outcome == "listed" else ""
                if self.settings.dqs_key:
                    qr.error = qr.error.replace(self.settings.dqs_key, "<dqs-key>")
                    qr.reason = qr.reason.replace(self.settings.dqs_key, "<dqs-key>")
                result.results.append(qr)
        result.elapsed = round(self.monotonic() - started, 3)
        return result


class _Probe:
    """One A question (and the TXT reason when the A answer is a hit), filled in as answers arrive,
    so what arrived before the deadline is kept when the rest is cancelled."""

    def __init__(self, lookup: Lookup, name: str, want_reason: bool) -> None:
        self.lookup = lookup
        self.name = name
        self.want_reason = want_reason
        self.timeout = lookup.timeout
        self.answer = Answer("error", error=f"no answer within the check deadline ({lookup.timeout:g}s)")
        self.reason = ""

    async def run(self) -> None:
        answer = await self.lookup.query(self.name)
        self.answer = answer
        if self.want_reason and answer.status == "found":
            txt = await self.lookup.query(self.name, "TXT")
            if txt.status == "found":
                self.reason = " ".join(txt.values)


async def _run_until(probes: list[_Probe], budget: float) -> None:
    """Run all probes concurrently for at most `budget` seconds; cancel what is left."""
    if not probes:
        return
    tasks = [asyncio.ensure_future(p.run()) for p in probes]
    _done, pending = await asyncio.wait(tasks, timeout=budget)
    for task in pending:
        task.cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    for probe, outcome in zip(probes, results, strict=True):
        if isinstance(outcome, Exception) and not isinstance(outcome, asyncio.CancelledError):
            probe.answer = Answer("error", error=f"query failed: {outcome}")


def _test_target(dnsbl: DnsblList, point: str) -> Target:
    """RFC 5782 test points: 127.0.0.x for IP lists, 'test'/'invalid' (single labels) for domain lists."""
    if dnsbl.kind == "ip":
        return parse_target(point)
    return Target(value=point.lower().rstrip("."), kind="domain")
