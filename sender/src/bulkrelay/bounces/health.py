"""The bounce poller's own health: the last pass's result, kept in the queue database.

One row: when the last pass ended, whether it worked, its summary or error, how many passes in
a row failed, and whether the admin was told. ``bulkrelay status`` shows it with its age (a
timer that stopped firing shows as an old "last poll"); the audit reads it from
``bulkrelay status --json`` (``bounce_poller``).

Alerts follow the DNSBL cron's rule: after ``alert_after`` failed passes in a row the admin
gets one mail, and one more when a pass works again. A mail that cannot be sent stays due and
is tried again after the next pass.
"""

from __future__ import annotations

import sqlite3
from typing import Any

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS bounce_poll_state (id INTEGER PRIMARY KEY CHECK (id = 1), "
    "at REAL NOT NULL, ok INTEGER NOT NULL, detail TEXT NOT NULL, failures INTEGER NOT NULL, "
    "alerted INTEGER NOT NULL)"
)


def _ensure(conn: sqlite3.Connection) -> None:
    conn.execute(SCHEMA)
    if conn.in_transaction:
        conn.commit()


def record(conn: sqlite3.Connection, *, ok: bool, detail: str, now: float, alert_after: int) -> str:
    """Store one pass's result; returns the alert now due: "failing", "recovered" or ""."""
    _ensure(conn)
    row = conn.execute("SELECT failures, alerted FROM bounce_poll_state WHERE id = 1").fetchone()
    failures, alerted = tuple(row) if row else (0, 0)
    failures = 0 if ok else failures + 1
    conn.execute(
        "INSERT INTO bounce_poll_state(id, at, ok, detail, failures, alerted) VALUES (1, ?, ?, ?, ?, ?) "
        "ON CONFLICT(id) DO UPDATE SET at = excluded.at, ok = excluded.ok, detail = excluded.detail, "
        "failures = excluded.failures",
        (now, int(ok), " ".join(detail.split())[:1000], failures, alerted),
    )
    conn.commit()
    if ok:
        return "recovered" if alerted else ""
    return "failing" if alert_after > 0 and failures >= alert_after and not alerted else ""


def alert_sent(conn: sqlite3.Connection, kind: str) -> None:
    conn.execute("UPDATE bounce_poll_state SET alerted = ? WHERE id = 1", (int(kind == "failing"),))
    conn.commit()


def read(conn: sqlite3.Connection, *, now: float) -> dict[str, Any] | None:
    """The last pass (None when the poller never ran against this database)."""
    exists = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'bounce_poll_state'"
    ).fetchone()
    if not exists:
        return None
    row = conn.execute(
        "SELECT at, ok, detail, failures, alerted FROM bounce_poll_state WHERE id = 1"
    ).fetchone()
    if row is None:
        return None
    at, ok, detail, failures, alerted = tuple(row)
    return {
        "last_poll_at": at,
        "age_seconds": round(max(now - at, 0.0), 1),
        "ok": bool(ok),
        "detail": detail,
        "failures_in_a_row": failures,
        "admin_alerted": bool(alerted),
    }


def alert_text(kind: str, state: dict[str, Any], hostname: str, alert_after: int) -> tuple[str, str]:
    """Subject and body of the admin mail."""
    if kind == "failing":
        subject = f"[bulkrelay] bounce poller on {hostname} FAILING ({state['failures_in_a_row']} passes)"
        body = (
            f"The bounce poller on {hostname} failed {state['failures_in_a_row']} passes in a row "
            f"(alert after {alert_after}). Bounces are not being processed, so bad addresses are not "
            "suppressed.\n\n"
            f"Last error: {state['detail']}\n\n"
            "See: journalctl -u bulkrelay-bounces.service; bulkrelay status\n"
            "You get one more mail when it works again.\n"
        )
    else:
        subject = f"[bulkrelay] bounce poller on {hostname} recovered"
        body = f"The bounce poller on {hostname} works again.\n\nLast pass: {state['detail']}\n"
    return subject, body
