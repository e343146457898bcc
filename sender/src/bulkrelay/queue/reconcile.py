"""Reconciliation: bring recipient rows in line with what Postfix logged and what DSNs said.

Results are matched to rows by Postfix queue id. A result seen before its row knows the queue id
(a 'submitting' row left by a crash) is kept in ``postfix_seen`` and applied when the row is
resolved from the log (``resolve_submitting``) or marked submitted (``Release.mark_submitted``).
"""

from __future__ import annotations

import sqlite3

from bulkrelay.queue.events import Events, bounce_type
from bulkrelay.queue.storage import FINAL_STATES, TLS_LEVELS


def apply_pending(conn: sqlite3.Connection, recipient_id: int, qid: str, queue: Events) -> dict | None:
    """Apply a result the log showed for ``qid`` before this row knew its queue id (and write
    its event: the row has just become 'submitted' in the same transaction)."""
    seen = conn.execute(
        "SELECT result_state, result_dsn, result_reply, result_tls FROM postfix_seen "
        "WHERE qid = ? AND result_state IS NOT NULL",
        (qid,),
    ).fetchone()
    if seen is None:
        return None
    conn.execute(
        "UPDATE recipients SET state = ?, dsn = ?, last_reply = ?, tls = ?, updated_at = ? WHERE id = ?",
        (
            seen["result_state"],
            seen["result_dsn"],
            seen["result_reply"],
            seen["result_tls"],
            queue.clock(),
            recipient_id,
        ),
    )
    queue._result(
        conn,
        recipient_id,
        state=seen["result_state"],
        dsn=seen["result_dsn"],
        reply=seen["result_reply"],
        queue_id=qid,
        tls=seen["result_tls"],
    )
    return {"state": seen["result_state"], "dsn": seen["result_dsn"], "reply": seen["result_reply"]}


class Reconciliation(Events):
    """The Postfix-log tracker's and the bounce poller's side of the queue."""

    def record_result(
        self, qid: str, address: str, *, state: str, dsn: str, reply: str, tls: str | None = None
    ) -> dict | None:
        """Apply a Postfix log result (delivered/deferred/bounced) to the row with that queue id.

        ``tls``: how a delivery was protected (TLS_LEVELS); kept for delivered results only.
        Returns the updated row, or None when the queue id is not ours. A final state is never
        overwritten by 'deferred' (log lines can be read twice after a restart), and a result
        already recorded (same state and status) writes no second event.
        """
        if state not in ("delivered", "deferred", "bounced"):
            raise ValueError(f"unknown result state {state!r}")
        if tls is not None and tls not in TLS_LEVELS:
            raise ValueError(f"unknown TLS level {tls!r}")
        tls = tls if state == "delivered" else None
        with self.transaction(durable=False) as conn:
            rows = conn.execute(
                "SELECT id, message, address, state, dsn FROM recipients WHERE postfix_qid = ?", (qid,)
            ).fetchall()
            match = [r for r in rows if r["address"].lower() == address.lower()] or rows
            if not match:
                # Not (yet) one of our rows: keep it for a row that learns this queue id later
                # (a 'submitting' row resolved from the log after a crash).
                conn.execute(
                    "INSERT INTO postfix_seen"
                    "(qid, at, result_address, result_state, result_dsn, result_reply, result_tls) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(qid) DO UPDATE SET "
                    "result_address = excluded.result_address, result_state = excluded.result_state, "
                    "result_dsn = excluded.result_dsn, result_reply = excluded.result_reply, "
                    "result_tls = excluded.result_tls "
                    "WHERE coalesce(result_state, 'deferred') = 'deferred'",
                    (qid, self.clock(), address, state, dsn, reply, tls),
                )
                return None
            row = dict(match[0])
            if state == "deferred" and row["state"] in FINAL_STATES:
                return row
            if row["state"] == "delivered":
                tls = None  # a line read again (after a restart) may lack its TLS line: keep the first
            conn.execute(
                "UPDATE recipients SET state = ?, dsn = ?, last_reply = ?, tls = coalesce(?, tls), "
                "updated_at = ? WHERE id = ?",
                (state, dsn, reply, tls, self.clock(), row["id"]),
            )
            if state in ("bounced", "deferred"):
                self._error(conn, row["id"], f"{state} dsn={dsn}: {reply}")
            if state == "deferred" or (row["state"], row["dsn"]) != (state, dsn):
                self._result(conn, row["id"], state=state, dsn=dsn, reply=reply, queue_id=qid, tls=tls)
            row["state"] = state
            row["dsn"] = dsn
            return row

    def record_bounce(self, recipient_id: int, *, status: str, diagnostic: str, kind: str) -> None:
        """Apply a DSN or complaint read from the bounce mailbox (bulkrelay.bounces).

        kind "hard" -> 'bounced'; "soft" -> 'deferred' unless the row is already final;
        "complaint" keeps the delivery state and records the complaint as the last reply.
        Events: ``complained``, or ``bounced`` (``expired`` for 5.4.7) with the kind, unless
        the row already holds this state and status (the DSN of a bounce the log showed).
        """
        if kind not in ("hard", "soft", "complaint"):
            raise ValueError(f"kind must be hard, soft or complaint, not {kind!r}")
        now = self.clock()
        with self.transaction() as conn:
            row = conn.execute(
                "SELECT state, dsn, postfix_qid FROM recipients WHERE id = ?", (recipient_id,)
            ).fetchone()
            if row is None:
                return
            state = row["state"]
            if kind == "hard":
                state = "bounced"
            elif kind == "soft" and state not in FINAL_STATES:
                state = "deferred"
            reply = diagnostic if kind != "complaint" else f"complaint: {diagnostic}"
            conn.execute(
                "UPDATE recipients SET state = ?, dsn = ?, last_reply = ?, updated_at = ? WHERE id = ?",
                (state, status, reply, now, recipient_id),
            )
            self._error(conn, recipient_id, f"{kind} bounce {status}: {diagnostic}")
            detail = {"queue_id": row["postfix_qid"], "reply": reply, "source": "dsn"}
            if kind == "complaint":
                self._event(conn, "complained", recipient_id, **detail)
            elif (row["state"], row["dsn"]) != (state, status):
                self._event(conn, bounce_type(status), recipient_id, kind=kind, dsn=status or None, **detail)

    def note_postfix(
        self, qid: str, *, message_id: str | None = None, envelope_from: str | None = None
    ) -> None:
        """Remember a queue id seen in the Postfix log (cleanup: message-id, qmgr: from)."""
        with self.transaction(durable=False) as conn:
            conn.execute(
                "INSERT INTO postfix_seen(qid, message_id, envelope_from, at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(qid) DO UPDATE SET message_id = coalesce(excluded.message_id, message_id), "
                "envelope_from = coalesce(excluded.envelope_from, envelope_from)",
                (qid, message_id, envelope_from, self.clock()),
            )

    def postfix_qids(self, *, envelope_from: str | None = None, message_id: str | None = None) -> list[str]:
        if envelope_from is not None:
            rows = self._query("SELECT qid FROM postfix_seen WHERE envelope_from = ?", (envelope_from,))
        else:
            rows = self._query("SELECT qid FROM postfix_seen WHERE message_id = ?", (message_id,))
        return [r[0] for r in rows]

    def submitting(self) -> list[dict]:
        rows = self._query(
            "SELECT r.*, m.message_id AS message_id_header FROM recipients r JOIN messages m "
            "ON m.id = r.message WHERE r.state = 'submitting' ORDER BY r.id"
        )
        return [dict(r) for r in rows]

    def resolve_submitting(self, recipient_id: int, qid: str | None) -> dict | None:
        """Settle an ambiguous 'submitting' row: Postfix has it (qid) or it goes back to 'queued'.

        Returns the result already logged for that queue id (applied to the row), if any.
        """
        now = self.clock()
        with self.transaction() as conn:
            if qid:
                changed = conn.execute(
                    "UPDATE recipients SET state = 'submitted', postfix_qid = ?, attempts = attempts + 1, "
                    "last_reply = 'resolved from the Postfix log after a restart', updated_at = ? "
                    "WHERE id = ? AND state = 'submitting'",
                    (qid, now, recipient_id),
                ).rowcount
                if not changed:
                    return None
                self._event(conn, "submitted", recipient_id, queue_id=qid, source="log")
                return apply_pending(conn, recipient_id, qid, self)
            else:
                conn.execute(
                    "UPDATE recipients SET state = 'queued', next_attempt = ?, updated_at = ?, "
                    "last_reply = 'resent: not found in the Postfix log after a restart' "
                    "WHERE id = ? AND state = 'submitting'",
                    (now, now, recipient_id),
                )
        return None
