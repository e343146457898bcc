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

With a self-test cache file (`selftest_cache`), a self-test answered in the last two hours is
not asked again, so a run asks one question per list; a cached failure keeps the list an error,
and a cached pass is asked again in the same run as soon as the list answers anything but
NXDOMAIN (a list that lists everything is never believed). A question the cache says was
answered with a record last time (a listing, usually days long) has that TXT reason and self-test
asked with it rather than after it, so a known listing costs no second round trip. All
questions of a run leave at once, over one UDP socket per nameserver (`UdpPool`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from bulkrelay.dnsbl.lists import ERROR_CODE_MEANINGS, DnsblList, Settings
from bulkrelay.dnsbl.lookup import Answer, Lookup, Transport, UdpPool, system_nameservers
from bulkrelay.dnsbl.names import Nameserver, Target, parse_target, query_name
from bulkrelay.dnsbl.selftest_cache import SelftestCache, selftest_key

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
    """Asks every list about every target at once. `transport` (tests) replaces the UDP socket
    pool; with `selftest_cache` (a file), self-tests answered within its age are not asked again."""

    def __init__(
        self,
        settings: Settings,
        transport: Transport | None = None,
        clock: Callable[[], datetime] = utc_now,
        monotonic: Callable[[], float] = time.monotonic,
        selftest_cache: str | Path | None = None,
    ) -> None:
        self.settings = settings
        self.transport = transport
        self.clock = clock
        self.monotonic = monotonic
        self.selftest_cache = selftest_cache
        self._default_ns = settings.nameservers

    def _nameservers(self, dnsbl: DnsblList) -> tuple[Nameserver, ...]:
        servers = dnsbl.nameservers or self._default_ns
        if not servers:
            servers = self._default_ns = system_nameservers()
        return servers

    def run(self, targets: Sequence[str | Target]) -> CheckResult:
        return asyncio.run(self.check(targets))

    async def check(self, targets: Sequence[str | Target]) -> CheckResult:
        parsed = [t if isinstance(t, Target) else parse_target(t) for t in targets]
        started = self.monotonic()
        now = self.clock()
        result = CheckResult(targets=[t.value for t in parsed], lists=[], checked_at=iso(now))
        jobs = [
            (dnsbl, [t for t in parsed if dnsbl.applies_to(t.kind, t.version)])
            for dnsbl in self.settings.lists
        ]
        jobs = [(dnsbl, applicable) for dnsbl, applicable in jobs if applicable]
        result.lists = [dnsbl.label for dnsbl, _ in jobs]
        cache = SelftestCache(self.selftest_cache, now.timestamp()) if self.selftest_cache else None
        pool = UdpPool() if self.transport is None else None
        transport = self.transport or pool
        assert transport is not None
        runs = [self._plan(dnsbl, applicable, transport, cache) for dnsbl, applicable in jobs]
        try:
            await _run_until(
                [job for run in runs for job in run.asked], self.settings.timeout + DEADLINE_MARGIN
            )
        finally:
            if pool is not None:
                pool.close()
        for run in runs:
            result.results += run.results(self.settings.dqs_key)
        if cache is not None:
            for run in runs:
                run.remember(cache)
            cache.save()
        result.elapsed = round(self.monotonic() - started, 3)
        return result

    def _plan(
        self, dnsbl: DnsblList, applicable: list[Target], transport: Transport, cache: SelftestCache | None
    ) -> _ListRun:
        servers = self._nameservers(dnsbl)
        lookup = Lookup(servers, transport, self.settings.timeout, self.settings.retries, self.monotonic)
        zone = dnsbl.query_zone(self.settings.dqs_key)
        run = _ListRun(dnsbl, applicable)
        for version in {target.version for target in applicable} if dnsbl.selftest else ():
            facts = (dnsbl.test_points(version), dnsbl.listed.text, dnsbl.errors.text, servers)
            key = selftest_key(zone, dnsbl.kind, version, *facts)
            test = run.selftests[version] = _SelfTest(dnsbl, version, lookup, zone, key)
            test.cached = cache.get(key) if cache else None
            if test.cached is None:
                run.asked.append(test.ask())
        for target in applicable:
            test = run.selftests.get(target.version)
            if test is not None and test.cached:
                continue  # a cached failure: the list is UNKNOWN for this family, nothing to ask
            # A cached pass is confirmed afresh when the list answers anything but NXDOMAIN,
            # so a list that has started to list everything is never taken at its word.
            confirm = test.ask if test is not None and test.cached == "" else None
            name = query_name(target, zone)
            probe = run.probes[target.value] = _Probe(lookup, name, True, confirm)
            if cache is not None:
                probe.key = selftest_key(name, servers)
                probe.expect_hit = cache.hit_last_time(probe.key)
            run.asked.append(_guarded(probe))
        return run


@dataclass
class _ListRun:
    """One list's part of a check: its self-test per address family and a probe per target."""

    dnsbl: DnsblList
    targets: list[Target]
    selftests: dict[int, _SelfTest] = field(default_factory=dict)
    probes: dict[str, _Probe] = field(default_factory=dict)
    asked: list[Awaitable[object]] = field(default_factory=list)

    def results(self, dqs_key: str) -> list[QueryResult]:
        results = []
        for target in self.targets:
            test = self.selftests.get(target.version)
            problem = test.problem() if test is not None else ""
            qr = QueryResult(
                target=target.value,
                zone=self.dnsbl.label,
                list_name=self.dnsbl.name or self.dnsbl.label,
                outcome="error",
                allowlist=self.dnsbl.allowlist,
                error=problem,
            )
            if not problem:
                probe = self.probes[target.value]
                qr.outcome, qr.codes, qr.error = judge(self.dnsbl, probe.answer)
                qr.reason = probe.reason if qr.outcome == "listed" else ""
            if dqs_key:
                qr.error = qr.error.replace(dqs_key, "<dqs-key>")
                qr.reason = qr.reason.replace(dqs_key, "<dqs-key>")
            results.append(qr)
        return results

    def remember(self, cache: SelftestCache) -> None:
        family = "domain" if self.dnsbl.kind == "domain" else None
        for version, test in self.selftests.items():
            if test.definite():
                cache.put(test.key, self.dnsbl.label, family or f"ip{version}", test.problem())
        for probe in self.probes.values():
            if probe.answer.status in ("found", "nxdomain"):
                cache.put_hit(probe.key, self.dnsbl.label, probe.answer.status == "found")


class _Probe:
    """One A question (and the TXT reason when the A answer is a hit), filled in as answers arrive,
    so what arrived before the deadline is kept when the rest is cancelled. `confirm` is awaited
    alongside the reason when the A answer is anything but NXDOMAIN. With `expect_hit` (the
    question was a hit last time) both are asked at once with the A question, not after it;
    the verdict still comes from the A answer alone."""

    def __init__(
        self,
        lookup: Lookup,
        name: str,
        want_reason: bool,
        confirm: Callable[[], Awaitable[object]] | None = None,
    ) -> None:
        self.lookup = lookup
        self.name = name
        self.want_reason = want_reason
        self.confirm = confirm
        self.key = ""  # names this question in the cache's hits (with a cache file)
        self.expect_hit = False
        self.answer = Answer("error", error=f"no answer within the check deadline ({lookup.timeout:g}s)")
        self.reason = ""

    async def run(self) -> None:
        if self.expect_hit:
            await asyncio.gather(self._ask(), *self._follow_ups())
        elif await self._ask():
            await asyncio.gather(*self._follow_ups())

    async def _ask(self) -> bool:
        """The A question; whether it was answered with a record."""
        self.answer = await self.lookup.query(self.name)
        return self.answer.status == "found"

    def _follow_ups(self) -> list[Awaitable[object]]:
        return [
            *([self._fetch_reason()] if self.want_reason else []),
            *([self.confirm()] if self.confirm is not None else []),
        ]

    async def _fetch_reason(self) -> None:
        txt = await self.lookup.query(self.name, "TXT")
        if txt.status == "found":
            self.reason = " ".join(txt.values)


class _SelfTest:
    """One list's RFC 5782 self-test for one address family: from the cache, asked with the
    run's questions, or asked once a cached pass needs confirming (`ask` starts it only once)."""

    def __init__(self, dnsbl: DnsblList, version: int, lookup: Lookup, zone: str, key: str) -> None:
        self.dnsbl = dnsbl
        self.version = version
        self.lookup = lookup
        self.zone = zone
        self.key = key
        self.cached: str | None = None
        self.probes: tuple[_Probe, _Probe] | None = None  # (must be listed, must not), once asked
        self._asking: asyncio.Future[object] | None = None

    def ask(self) -> asyncio.Future[object]:
        if self._asking is None:
            listed, clean = (
                _Probe(self.lookup, query_name(_test_target(self.dnsbl, point), self.zone), want_reason=False)
                for point in self.dnsbl.test_points(self.version)
            )
            self.probes = (listed, clean)
            self._asking = asyncio.gather(*(_guarded(probe) for probe in self.probes))
        return self._asking

    def problem(self) -> str:
        if self.probes is None:
            return self.cached or ""
        listed, clean = self.probes
        return selftest_problem(self.dnsbl, listed.answer, clean.answer, self.version)

    def definite(self) -> bool:
        """Asked, and both points answered (listed or NXDOMAIN): worth keeping in the cache."""
        return self.probes is not None and all(p.answer.status in ("found", "nxdomain") for p in self.probes)


async def _guarded(probe: _Probe) -> None:
    try:
        await probe.run()
    except Exception as exc:  # whatever broke, the question stays unanswered
        probe.answer = Answer("error", error=f"query failed: {exc}")


async def _run_until(asked: list[Awaitable[None]], budget: float) -> None:
    """Run everything asked concurrently for at most `budget` seconds; cancel what is left."""
    if not asked:
        return
    tasks = [asyncio.ensure_future(job) for job in asked]
    _done, pending = await asyncio.wait(tasks, timeout=budget)
    for task in pending:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def _test_target(dnsbl: DnsblList, point: str) -> Target:
    """RFC 5782 test points: 127.0.0.x for IP lists, 'test'/'invalid' (single labels) for domain lists."""
    if dnsbl.kind == "ip":
        return parse_target(point)
    return Target(value=point.lower().rstrip("."), kind="domain")
