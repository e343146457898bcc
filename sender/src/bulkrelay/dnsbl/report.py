"""Verdicts and output per the Nagios plugin guidelines: exit code, one summary line, perfdata.

Status, most severe first:
  CRITICAL  listings >= critical threshold
  UNKNOWN   some list could not be checked (it might list you): never reported as OK
  WARNING   listings >= warning threshold
  OK        every list answered and the listings stay below the thresholds
Allowlist results are shown apart and never count as listings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bulkrelay.dnsbl.checker import CheckResult, QueryResult

EXIT_CODES = {"OK": 0, "WARNING": 1, "CRITICAL": 2, "UNKNOWN": 3}


@dataclass(frozen=True)
class Thresholds:
    warning: int = 1
    critical: int = 1

    def __post_init__(self) -> None:
        if self.warning < 1 or self.critical < 1:
            raise ValueError("thresholds count listings and must be at least 1")
        if self.warning > self.critical:
            raise ValueError(
                f"warning threshold {self.warning} is above critical {self.critical}: "
                "warning must be <= critical"
            )


def status_of(result: CheckResult, thresholds: Thresholds) -> str:
    listed = len(result.listings)
    if listed >= thresholds.critical:
        return "CRITICAL"
    if result.errors:
        return "UNKNOWN"
    if listed >= thresholds.warning:
        return "WARNING"
    return "OK"


def _clean(text: str) -> str:
    """No '|' (starts perfdata) and no newline inside the text part of plugin output."""
    return " ".join(text.replace("|", "/").split())


def _listing_text(r: QueryResult) -> str:
    detail = ", ".join(r.codes)
    if r.reason:
        detail += f": {r.reason}"
    return f"{r.target} listed on {r.zone} ({_clean(detail)})"


def summary(result: CheckResult, status: str) -> str:
    parts: list[str] = []
    if result.listings:
        parts.append("; ".join(_listing_text(r) for r in result.listings))
    zones = result.error_zones()
    if zones:
        broken = ", ".join(f"{zone} ({_clean(msg)})" for zone, msg in zones.items())
        parts.append(f"{len(zones)} of {len(result.lists)} lists could not be checked: {broken}")
    if not parts:
        parts.append(
            f"{', '.join(result.targets)} not listed on {len(result.lists)} lists "
            f"({result.checked} checks answered)"
        )
    return f"DNSBL {status} - " + "; ".join(parts)


def perfdata(result: CheckResult, thresholds: Thresholds) -> str:
    blocklist_pairs = result.checked + len(result.errors)
    # A Nagios range "N" alerts above N; the plugin alerts at N listings or more, hence N - 1.
    warn, crit = thresholds.warning - 1, thresholds.critical - 1
    return (
        f"listed={len(result.listings)};{warn};{crit};0;{blocklist_pairs} "
        f"checked={result.checked};;;0;{blocklist_pairs} errors={len(result.errors)};;;0 "
        f"time={result.elapsed:.3f}s;;;0"
    )


def long_output(result: CheckResult) -> list[str]:
    lines = [f"listed: {_listing_text(r)}" for r in result.listings]
    lines += [f"error: {r.zone} for {r.target}: {_clean(r.error)}" for r in result.errors]
    lines += [f"allowlisted: {r.target} on {r.zone} ({', '.join(r.codes)})" for r in result.allowlisted]
    lines += [
        f"allowlist not checked: {r.zone} for {r.target}: {_clean(r.error)}" for r in result.allowlist_errors
    ]
    return lines


def plugin_output(result: CheckResult, thresholds: Thresholds) -> tuple[str, int]:
    status = status_of(result, thresholds)
    text = f"{summary(result, status)} | {perfdata(result, thresholds)}"
    extra = long_output(result)
    if extra:
        text += "\n" + "\n".join(extra)
    return text, EXIT_CODES[status]


def as_dict(result: CheckResult, thresholds: Thresholds) -> dict[str, Any]:
    """The machine form (--json and the state file): see roles/dnsbl_monitor/README.md."""
    return {
        "status": status_of(result, thresholds),
        "checked_at": result.checked_at,
        "elapsed": result.elapsed,
        "targets": list(result.targets),
        "lists": list(result.lists),
        "checked": result.checked,
        "listings": [r.as_dict() for r in result.listings],
        "errors": [r.as_dict() for r in result.errors],
        "allowlisted": [r.as_dict() for r in result.allowlisted],
        "allowlist_errors": [r.as_dict() for r in result.allowlist_errors],
    }
