"""Webhook delivery state: each webhook's outbox cursor, its retry state and its parked events.

The delivery loop (``bulkrelay.webhooks.delivery``) is the only writer. A webhook without a row
starts at cursor 0, i.e. from the oldest event still in the outbox.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bulkrelay.queue.storage import Storage

REPLY_KEPT = 200  # characters of a receiver's reply kept with a parked event


class WebhookLedger(Storage):
    def webhook_state(self, name: str) -> dict[str, Any]:
        """cursor, failures (in a row), failures_total, failing_since, next_attempt, last_error.

        A webhook without a row yet is at cursor 0.
        """
        rows = self._query(
            "SELECT cursor, failures, failures_total, failing_since, next_attempt, last_error "
            "FROM webhook_cursors "
            "WHERE webhook = ?",
            (name,),
        )
        if not rows:
            return {
                "cursor": 0,
                "failures": 0,
                "failures_total": 0,
                "failing_since": None,
                "next_attempt": 0.0,
                "last_error": None,
            }
        return dict(rows[0])

    def webhook_advance(
        self, name: str, cursor: int, *, now: float, parked: Sequence[dict[str, Any]] = ()
    ) -> None:
        """Move the cursor to ``cursor`` (after a 2xx, or past parked events) and clear the failures.

        ``parked``: events given up on in the same step, each {event, reason, status, reply}; they
        are recorded in the same transaction as the cursor, so a crash keeps both or neither.
        """
        with self.transaction() as conn:
            for p in parked:
                conn.execute(
                    "INSERT INTO webhook_parked(webhook, cursor, event_id, reason, status, reply, at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        name,
                        p["event"]["cursor"],
                        p["event"]["id"],
                        p["reason"],
                        p["status"],
                        (p["reply"] or "")[:REPLY_KEPT],
                        now,
                    ),
                )
            conn.execute(
                "INSERT INTO webhook_cursors(webhook, cursor, failures, failing_since, next_attempt, "
                "last_error, updated_at) VALUES (?, ?, 0, NULL, 0, NULL, ?) "
                "ON CONFLICT(webhook) DO UPDATE SET cursor = excluded.cursor, failures = 0, "
                "failing_since = NULL, next_attempt = 0, updated_at = excluded.updated_at",
                (name, cursor, now),
            )

    def webhook_failed(self, name: str, error: str, *, now: float, next_attempt: float) -> dict[str, Any]:
        """Count one more failed attempt at the head; returns the new state."""
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO webhook_cursors(webhook, cursor, failures, failures_total, failing_since, "
                "next_attempt, last_error, updated_at) VALUES (?, 0, 1, 1, ?, ?, ?, ?) "
                "ON CONFLICT(webhook) DO UPDATE SET failures = failures + 1, "
                "failures_total = failures_total + 1, "
                "failing_since = COALESCE(failing_since, excluded.failing_since), "
                "next_attempt = excluded.next_attempt, last_error = excluded.last_error, "
                "updated_at = excluded.updated_at",
                (name, now, next_attempt, error, now),
            )
        return self.webhook_state(name)

    def webhook_parked(self, name: str, *, limit: int = 20) -> tuple[int, list[dict[str, Any]]]:
        """How many events ``name`` parked, and the last ``limit`` of them (newest first)."""
        total = self._query("SELECT count(*) FROM webhook_parked WHERE webhook = ?", (name,))[0][0]
        rows = self._query(
            "SELECT cursor, event_id, reason, status, reply, at FROM webhook_parked WHERE webhook = ? "
            "ORDER BY id DESC LIMIT ?",
            (name, limit),
        )
        return total, [dict(r) for r in rows]
