"""The RFC 5782 self-test results of recent runs, kept in a file beside the DNSBL state.

The check runs as separate processes (the cron job, NRPE's check_dnsbl), so what one run
learnt about a list's self-test is kept in a file for `MAX_AGE` seconds; within it, a run asks
one question per list (the target) instead of three. What is kept per list and address family
is the self-test's verdict: "" (passed) or the problem that makes the list UNKNOWN, so a
cached failure keeps the list UNKNOWN exactly as a fresh one would. Only definite answers are
kept (both test points answered, listed or NXDOMAIN); a timeout, SERVFAIL or network error is
asked again next run, so one lost packet never makes a list UNKNOWN for an hour.

The file is a cache, never a source of truth: unreadable, corrupt, from the future, or of
another format, it is ignored (and replaced by the next run that can write it). It is written
atomically (temporary file + rename) and only into an existing directory, so a check run by a
user who may not write there (NRPE) still reads what the cron job keeps fresh. Two runs writing
at once lose one run's news, which only costs the next run a question.

Entries are keyed by a hash of everything that decides the self-test - the zone asked (with
the DQS key), the test points, the list's codes and the nameservers - so changing any of them
asks again, and the file names no DQS key.

The file also keeps, for `MAX_AGE`, which questions were answered with a record last time
(`hits`, keyed by a hash of the question name): a listing usually lasts days, so the next run
asks such a question's TXT reason and the list's self-test together with it instead of one
round trip later (issue 16). A hint that has gone stale costs those questions, never a verdict.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bulkrelay.dnsbl.state import write_atomic

FORMAT = 1
# Two hours: the cron job runs hourly (dnsbl_monitor__cron_schedule), so it asks the self-test
# every other run and the NRPE checks between ride on it. A list that starts listing everything
# is caught at once anyway: any answer other than NXDOMAIN re-asks the self-test in the same run.
MAX_AGE = 7200.0


def selftest_key(*facts: object) -> str:
    """A stable key for the facts that decide one self-test (secrets inside are hashed away)."""
    return hashlib.sha256(json.dumps([str(f) for f in facts]).encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Entry:
    zone: str  # for people reading the file; the key decides
    family: str
    asked_at: float  # epoch seconds
    problem: str  # "" = passed


@dataclass(frozen=True)
class Hit:
    zone: str  # for people reading the file
    asked_at: float


class SelftestCache:
    """Entries read from `path` at creation; `put` what a run asked, then `save()`."""

    def __init__(self, path: str | Path, now: float, max_age: float = MAX_AGE) -> None:
        self.path = Path(path)
        self.now = now
        self.max_age = max_age
        entries, hits = _read(self.path)
        self.entries = {key: entry for key, entry in entries.items() if self._fresh(entry)}
        self.hits = {key: hit for key, hit in hits.items() if self._fresh(hit)}
        self.changed = False

    def _fresh(self, entry: Entry | Hit) -> bool:
        return 0 <= self.now - entry.asked_at < self.max_age

    def get(self, key: str) -> str | None:
        """The cached problem ("" = passed), or None when this self-test must be asked."""
        entry = self.entries.get(key)
        return entry.problem if entry is not None else None

    def put(self, key: str, zone: str, family: str, problem: str) -> None:
        self.entries[key] = Entry(zone, family, self.now, problem)
        self.changed = True

    def hit_last_time(self, key: str) -> bool:
        """Whether this question was answered with a record by a recent run."""
        return key in self.hits

    def put_hit(self, key: str, zone: str, hit: bool) -> None:
        """Remember (or forget) that this question was answered with a record."""
        if hit:
            self.hits[key] = Hit(zone, self.now)
            self.changed = True
        elif self.hits.pop(key, None) is not None:
            self.changed = True

    def save(self) -> None:
        """Write the entries when this run added any; never fails the check."""
        if not self.changed or not self.path.parent.is_dir():
            return
        data = {
            "format": FORMAT,
            "entries": {
                key: {"zone": e.zone, "family": e.family, "asked_at": e.asked_at, "problem": e.problem}
                for key, e in sorted(self.entries.items())
            },
            "hits": {key: {"zone": h.zone, "asked_at": h.asked_at} for key, h in sorted(self.hits.items())},
        }
        try:
            write_atomic(self.path, json.dumps(data, indent=1) + "\n")
        except OSError:
            pass  # not ours to write (NRPE's user): the next run that may write refreshes it
        else:
            self.changed = False


def _read(path: Path) -> tuple[dict[str, Entry], dict[str, Hit]]:
    try:
        data: Any = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}, {}
    if (
        not isinstance(data, dict)
        or data.get("format") != FORMAT
        or not isinstance(data.get("entries"), dict)
    ):
        return {}, {}
    entries, hits = {}, {}
    for key, item in data["entries"].items():
        if not isinstance(item, dict):
            continue
        asked_at, problem = item.get("asked_at"), item.get("problem")
        if _is_time(asked_at) and isinstance(problem, str):
            entries[str(key)] = Entry(
                str(item.get("zone", "")), str(item.get("family", "")), float(asked_at), problem
            )
    found = data.get("hits")  # absent from files written before issue 16's hints
    for key, item in (found if isinstance(found, dict) else {}).items():
        if isinstance(item, dict) and _is_time(item.get("asked_at")):
            hits[str(key)] = Hit(str(item.get("zone", "")), float(item["asked_at"]))
    return entries, hits


def _is_time(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
