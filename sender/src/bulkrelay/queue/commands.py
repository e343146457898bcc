"""Operator commands: list, show, counts, retry, drop, and the key/value state (pause)."""

from __future__ import annotations

import logging

from bulkrelay.queue.storage import STATES, TLS_LEVELS, Storage

log = logging.getLogger("bulkrelay.queue")


class Commands(Storage):
    """What ``bulkrelay status|list|show|retry|drop|pause`` read and change."""

    def recipient(self, recipient_id: int) -> dict | None:
        rows = self._query(
            "SELECT r.*, m.message_id AS message_id_header, m.mail_from FROM recipients r "
            "JOIN messages m ON m.id = r.message WHERE r.id = ?",
            (recipient_id,),
        )
        return dict(rows[0]) if rows else None

    def message(self, message_id: int) -> dict | None:
        rows = self._query(
            "SELECT id, mail_from, message_id, source, size, created_at FROM messages WHERE id = ?",
            (message_id,),
        )
        if not rows:
            return None
        out = dict(rows[0])
        out["recipients"] = [
            dict(r)
            for r in self._query("SELECT * FROM recipients WHERE message = ? ORDER BY id", (message_id,))
        ]
        return out

    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(STATES, 0)
        for row in self._query("SELECT state, n FROM state_counts"):
            counts[row["state"]] = row["n"]
        return counts

    def tls_counts(self) -> dict[str, int]:
        """Deliveries by how they were protected (TLS_LEVELS, then "unknown" when any)."""
        counts = dict.fromkeys(TLS_LEVELS, 0)
        for row in self._query("SELECT tls, n FROM tls_counts"):
            counts[row["tls"]] = row["n"]
        return counts

    def list_recipients(self, *, state: str | None = None, limit: int = 50, after: int = 0) -> list[dict]:
        if state:
            rows = self._query(
                "SELECT r.id, r.message, r.address, r.state, r.attempts, r.updated_at, r.postfix_qid, "
                "r.last_reply FROM recipients r WHERE r.state = ? AND r.id > ? ORDER BY r.id LIMIT ?",
                (state, after, limit),
            )
        else:
            rows = self._query(
                "SELECT r.id, r.message, r.address, r.state, r.attempts, r.updated_at, r.postfix_qid, "
                "r.last_reply FROM recipients r WHERE r.id > ? ORDER BY r.id LIMIT ?",
                (after, limit),
            )
        return [dict(r) for r in rows]

    def last_errors(self, limit: int = 5) -> list[dict]:
        rows = self._query("SELECT * FROM errors ORDER BY id DESC LIMIT ?", (limit,))
        return [dict(r) for r in rows]

    # -- key/value state --------------------------------------------------------------------

    def get_state(self, key: str) -> str | None:
        rows = self._query("SELECT value FROM kv WHERE key = ?", (key,))
        return rows[0][0] if rows else None

    def set_state(self, key: str, value: str | None) -> None:
        with self.transaction() as conn:
            if value is None:
                conn.execute("DELETE FROM kv WHERE key = ?", (key,))
            else:
                conn.execute(
                    "INSERT INTO kv(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = ?",
                    (key, value, value),
                )

    def retry(self, *, recipient_ids: list[int] | None = None, state: str | None = None) -> int:
        """Queue recipients again now (failed/deferred/queued ones; never submitting/submitted)."""
        allowed = ("failed", "deferred", "queued", "bounced")
        now = self.clock()
        with self.transaction() as conn:
            if recipient_ids is not None:
                marks = ",".join("?" * len(recipient_ids))
                cur = conn.execute(
                    f"UPDATE recipients SET state = 'queued', next_attempt = ?, updated_at = ? "  # noqa: S608
                    f"WHERE id IN ({marks}) AND state IN ({','.join('?' * len(allowed))})",
                    (now, now, *recipient_ids, *allowed),
                )
            else:
                if state not in allowed:
                    raise ValueError(f"retry applies to {', '.join(allowed)} recipients, not {state!r}")
                cur = conn.execute(
                    "UPDATE recipients SET state = 'queued', next_attempt = ?, updated_at = ? "
                    "WHERE state = ?",
                    (now, now, state),
                )
            return cur.rowcount

    def recipients_of(self, message_id: int) -> list[int]:
        return [r[0] for r in self._query("SELECT id FROM recipients WHERE message = ?", (message_id,))]

    def drop(self, message_id: int) -> int:
        """Delete a message and its recipients unless one is being submitted right now."""
        with self.transaction() as conn:
            busy = conn.execute(
                "SELECT count(*) FROM recipients WHERE message = ? AND state = 'submitting'", (message_id,)
            ).fetchone()[0]
            if busy:
                raise ValueError(f"message {message_id} has {busy} recipient(s) being submitted; try again")
            n = conn.execute("DELETE FROM recipients WHERE message = ?", (message_id,)).rowcount
            gone = conn.execute("DELETE FROM messages WHERE id = ?", (message_id,)).rowcount
        if not gone:
            raise KeyError(message_id)
        log.info("event=dropped message=%s recipients=%d", message_id, n)
        return n
