"""What each webhook has left to deliver: for `bulkrelay webhooks status`, `bulkrelay status`,
the metrics endpoint and the audit (which reads `bulkrelay webhooks status --json`).

Pending events are the events after the webhook's cursor, of every type: the ones the loop has
not handled yet (an event the filter leaves out is pending until the loop passes it).
"""

from __future__ import annotations

import datetime as dt
import urllib.parse
from pathlib import Path
from typing import Any

from bulkrelay.config import ConfigError
from bulkrelay.queue import Queue
from bulkrelay.webhooks import settings as settingsmod


def _iso(ts: float | None) -> str | None:
    return None if ts is None else dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def webhook_status(queue: Queue, settings: settingsmod.Settings, *, now: float) -> list[dict[str, Any]]:
    rows = []
    for w in settings.webhooks:
        state = queue.webhook_state(w.name)
        oldest = queue.oldest_event_after(state["cursor"])
        parked, last = queue.webhook_parked(w.name, limit=3)
        url = urllib.parse.urlsplit(w.url)
        rows.append(
            {
                "name": w.name,
                # without the query string: a token there would be a secret
                "url": urllib.parse.urlunsplit((url.scheme, url.netloc, url.path, "", "")),
                "events": list(w.events) or "all",
                "cursor": state["cursor"],
                "pending": queue.count_events_after(state["cursor"]),
                "oldest_pending_timestamp": oldest,
                "oldest_pending_at": _iso(oldest),
                "oldest_pending_age": None if oldest is None else max(0.0, round(now - oldest, 1)),
                "failures": state["failures"],
                "failures_total": state["failures_total"],
                "last_error": state["last_error"],
                "next_attempt": _iso(state["next_attempt"]) if state["failures"] else None,
                "parked": parked,
                "last_parked": [{**p, "at": _iso(p["at"])} for p in last],
            }
        )
    return rows


NONE_CONFIGURED = {"configured": False, "webhooks": [], "error": None}


def configured_status(
    queue: Queue, path: str | Path = settingsmod.DEFAULT_PATH, *, now: float
) -> dict[str, Any]:
    """{"configured", "webhooks", "error"} for the settings at ``path``: no file, no webhooks."""
    if not Path(path).exists():
        return dict(NONE_CONFIGURED)
    try:
        settings = settingsmod.load(path)
    except ConfigError as exc:
        return {"configured": True, "webhooks": [], "error": str(exc)}
    return {
        "configured": bool(settings.webhooks),
        "webhooks": webhook_status(queue, settings, now=now),
        "error": None,
    }


def format_rows(rows: list[dict[str, Any]]) -> list[str]:
    lines = []
    for r in rows:
        age = "-" if r["oldest_pending_age"] is None else f"{r['oldest_pending_age']:.0f}s"
        line = (
            f"webhook {r['name']}: cursor {r['cursor']}, {r['pending']} pending (oldest {age}), "
            f"{r['failures']} failure(s) in a row, {r['parked']} parked"
        )
        if r["last_error"] and r["failures"]:
            line += f"; last error: {r['last_error']} (next try {r['next_attempt']})"
        lines.append(line)
        lines.extend(
            f"  parked {p['at']}: event {p['event_id']} (cursor {p['cursor']}) {p['reason']}, "
            f"status {p['status'] or '-'}: {p['reply'] or '-'}"
            for p in r["last_parked"]
        )
    return lines
