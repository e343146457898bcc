"""Cron-mode memory: the state file, change detection and the alert text.

The admin hears about changes only - newly listed, delisted, a list broken, a list back -
compared with what the last *delivered* alert told them (`notified`), so a failed mail is
retried on the next run instead of lost. A list must fail `alert_after` runs in a row before
it is reported broken (one timeout is not worth a mail). While a list that listed the relay
cannot be checked, its listing is carried over (marked "stale"): the relay is never declared
delisted, and the sender never resumes, on the strength of a timeout.

The state file is the contract with the sender: a JSON object with `status`, `listings`
(objects with `target`, `zone`, `codes`, `reason`), `errors` and `checked_at`; the sender pauses
while `listings` is not empty. It is replaced atomically (temporary file + rename).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STATE_VERSION = 1
DEFAULT_STATE_PATH = "/var/lib/bulkrelay/dnsbl/state.json"


@dataclass(frozen=True)
class Event:
    kind: str  # "listed" | "delisted" | "broken" | "recovered"
    zone: str
    target: str = ""
    detail: str = ""

    def line(self) -> str:
        if self.kind == "listed":
            return f"LISTED: {self.target} is now listed on {self.zone} ({self.detail})"
        if self.kind == "delisted":
            return f"DELISTED: {self.target} is no longer listed on {self.zone}"
        if self.kind == "broken":
            return f"LIST BROKEN: {self.zone} cannot be checked ({self.detail})"
        return f"LIST BACK: {self.zone} answers again"


def _key(item: dict[str, Any]) -> tuple[str, str]:
    return (str(item.get("target", "")), str(item.get("zone", "")))


def read_state(path: str | Path) -> dict[str, Any] | None:
    """The previous state, or None when there is none or it is unreadable (then everything
    current is news, which errs on the side of telling the admin)."""
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_atomic(path: str | Path, text: str, mode: int = 0o644) -> None:
    """Write `text` to a temporary file beside `path`, fsync it, rename it over `path`."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def advance(
    previous: dict[str, Any] | None, current: dict[str, Any], alert_after: int = 2, critical: int = 1
) -> tuple[dict[str, Any], list[Event]]:
    """The next state and the events to alert, assuming the alert will be delivered.

    `current` is `report.as_dict()` of this run. The caller keeps `previous["notified"]` in the
    returned state when delivering the alert fails.
    """
    previous = previous or {}
    prev_listings = {_key(x): x for x in previous.get("listings", []) if isinstance(x, dict)}
    error_pairs = {_key(e) for e in current.get("errors", [])}
    error_zones: dict[str, str] = {}
    for err in current.get("errors", []):
        error_zones.setdefault(str(err.get("zone")), str(err.get("error", "")))

    listings: list[dict[str, Any]] = []
    for item in current.get("listings", []):
        entry = dict(item, stale=False)
        entry["since"] = prev_listings.get(_key(item), {}).get("since") or current.get("checked_at")
        listings.append(entry)
    fresh = {_key(x) for x in listings}
    for key, item in prev_listings.items():
        if key not in fresh and key in error_pairs:
            listings.append(dict(item, stale=True))

    streaks = {z: int(n) for z, n in dict(previous.get("error_streaks", {})).items() if z in error_zones}
    for zone in error_zones:
        streaks[zone] = streaks.get(zone, 0) + 1

    notified = previous.get("notified") or {}
    known_listed = {tuple(k) for k in notified.get("listings", [])}
    known_broken = set(notified.get("broken", []))
    broken_now = {z for z, n in streaks.items() if n >= alert_after} | (known_broken & set(error_zones))
    listed_now = {_key(x) for x in listings}

    events: list[Event] = []
    by_key = {_key(x): x for x in listings}
    for key in sorted(listed_now - known_listed):
        item = by_key[key]
        detail = ", ".join(item.get("codes", []))
        if item.get("reason"):
            detail += f": {item['reason']}"
        events.append(Event("listed", zone=key[1], target=key[0], detail=detail))
    events += [Event("delisted", zone=z, target=t) for t, z in sorted(known_listed - listed_now)]
    events += [Event("broken", zone=z, detail=error_zones[z]) for z in sorted(broken_now - known_broken)]
    events += [Event("recovered", zone=z) for z in sorted(known_broken - set(error_zones))]

    status = current.get("status", "UNKNOWN")
    if sum(1 for x in listings if not x["stale"]) < critical <= len(listings):
        status = "CRITICAL"  # still listed as far as we know: the list that listed us is silent
    state = dict(current)
    state.update(
        version=STATE_VERSION,
        status=status,
        listings=listings,
        error_streaks=dict(sorted(streaks.items())),
        notified={"listings": [list(k) for k in sorted(listed_now)], "broken": sorted(broken_now)},
        events=[e.line() for e in events],
    )
    return state, events


def alert_subject(events: list[Event], hostname: str) -> str:
    if len(events) == 1:
        event = events[0]
        what = {
            "listed": f"{event.target} LISTED on {event.zone}",
            "delisted": f"{event.target} delisted from {event.zone}",
            "broken": f"list {event.zone} cannot be checked",
            "recovered": f"list {event.zone} answers again",
        }[event.kind]
    else:
        counts: dict[str, int] = {}
        for event in events:
            counts[event.kind] = counts.get(event.kind, 0) + 1
        what = f"{len(events)} changes (" + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) + ")"
    return f"[bulkrelay DNSBL] {hostname}: {what}"


def alert_body(events: list[Event], state: dict[str, Any], hostname: str) -> str:
    lines = [f"DNSBL check on {hostname} at {state.get('checked_at')}: status {state.get('status')}.", ""]
    lines += [event.line() for event in events]
    listings = state.get("listings", [])
    lines += ["", f"Currently listed ({len(listings)}):"]
    for item in listings:
        stale = " [list not answering now; last known]" if item.get("stale") else ""
        lines.append(
            f"  {item['target']} on {item['zone']} since {item.get('since')}: "
            f"{', '.join(item.get('codes', []))} {item.get('reason', '')}{stale}".rstrip()
        )
    if not listings:
        lines.append("  none")
    errors = state.get("errors", [])
    if errors:
        lines += ["", "Lists that could not be checked this run:"]
        lines += [f"  {e['zone']} for {e.get('target')}: {e.get('error')}" for e in errors]
    if any(e.kind == "listed" for e in events):
        lines += [
            "",
            "While listed, the bulkrelay sender pauses (it reads this state file). Find the cause",
            "(compromised account, bad list, bounce storm), fix it, then request removal on the",
            "list's web site; the next check reports the delisting.",
        ]
    lines += ["", "-- bulkrelay dnsbl cron (mails only on change)"]
    return "\n".join(lines) + "\n"


def prometheus_text(state: dict[str, Any], now_epoch: float) -> str:
    status_value = {"OK": 0, "WARNING": 1, "CRITICAL": 2, "UNKNOWN": 3}.get(str(state.get("status")), 3)
    lines = [
        "# HELP bulkrelay_dnsbl_status Check status (0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN).",
        "# TYPE bulkrelay_dnsbl_status gauge",
        f"bulkrelay_dnsbl_status {status_value}",
        "# HELP bulkrelay_dnsbl_listings Current listings (including stale ones of silent lists).",
        "# TYPE bulkrelay_dnsbl_listings gauge",
        f"bulkrelay_dnsbl_listings {len(state.get('listings', []))}",
        "# HELP bulkrelay_dnsbl_errors Checks (list x target) that could not be answered.",
        "# TYPE bulkrelay_dnsbl_errors gauge",
        f"bulkrelay_dnsbl_errors {len(state.get('errors', []))}",
        "# HELP bulkrelay_dnsbl_listed 1 when the target is listed on the zone.",
        "# TYPE bulkrelay_dnsbl_listed gauge",
    ]
    for item in state.get("listings", []):
        target = _label(item.get("target"))
        zone = _label(item.get("zone"))
        lines.append(f'bulkrelay_dnsbl_listed{{target="{target}",zone="{zone}"}} 1')
    lines += [
        "# HELP bulkrelay_dnsbl_last_run_timestamp_seconds When the last check finished.",
        "# TYPE bulkrelay_dnsbl_last_run_timestamp_seconds gauge",
        f"bulkrelay_dnsbl_last_run_timestamp_seconds {now_epoch:.0f}",
    ]
    return "\n".join(lines) + "\n"


def _label(value: object) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ")
