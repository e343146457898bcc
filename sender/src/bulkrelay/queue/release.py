"""Release: hand ready recipients to Postfix and record what happened at submission.

``take`` marks a batch 'submitting' and writes the release ledger in one transaction; the
``mark_*`` calls record the SMTP reply per recipient; the ledger queries feed bulkrelay.policy.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any

from bulkrelay.bounces.classify import classify, find_status
from bulkrelay.queue.events import Events
from bulkrelay.queue.reconcile import apply_pending
from bulkrelay.queue.storage import ERRORS_KEPT

log = logging.getLogger("bulkrelay.queue")

_QUEUED_AS = re.compile(r"queued as ([0-9A-Za-z]+)")


def queue_id_from_reply(reply: str) -> str | None:
    """The Postfix queue id in a "250 2.0.0 Ok: queued as ABC123" reply, or None."""
    match = _QUEUED_AS.search(reply)
    return match.group(1) if match else None


class Release(Events):
    """The release loop's side of the queue."""

    def next_ready_at(self) -> float | None:
        """When the earliest queued recipient becomes ready (None when nothing is queued)."""
        # One step down the ready index (a plain min() over state = 'queued' may scan them all).
        rows = self._query(
            "SELECT next_attempt FROM recipients INDEXED BY recipients_ready "
            "WHERE state = 'queued' ORDER BY next_attempt LIMIT 1"
        )
        return rows[0][0] if rows else None

    def body(self, message_id: int) -> bytes:
        rows = self._query("SELECT body FROM messages WHERE id = ?", (message_id,))
        if not rows:
            raise KeyError(message_id)
        return bytes(rows[0][0])

    def take(
        self,
        limit: int,
        *,
        now: float,
        domain_remaining: dict[str, int] | None = None,
        skip: Callable[[str], str | None] | None = None,
        envelope: Callable[[dict], str] | None = None,
    ) -> list[dict]:
        """Release up to ``limit`` ready recipients: mark them 'submitting' and record the release.

        ``domain_remaining`` caps recipients per domain (domains not listed are uncapped);
        ``skip(address)`` returns a reason to mark a recipient 'suppressed' instead (those do not
        count against the limit); ``envelope(row)`` gives the envelope sender (VERP address),
        stored with the row. One transaction: after a crash either all of these rows are
        'submitting' with their release recorded, or none is.
        """
        if limit <= 0:
            return []
        remaining = dict(domain_remaining or {})
        blocked = {d for d, n in remaining.items() if n <= 0}
        taken: list[dict] = []
        with self.transaction() as conn:
            last = (float("-inf"), 0)
            while len(taken) < limit:
                want = limit - len(taken)
                params: list[Any] = [now, last[0], last[1]]
                skip_domains = ""
                if blocked:
                    skip_domains = f"AND r.domain NOT IN ({','.join('?' * len(blocked))})"
                    params.extend(sorted(blocked))
                rows = conn.execute(
                    "SELECT r.id, r.message, r.address, r.domain, r.attempts, r.next_attempt, "  # noqa: S608
                    "m.mail_from "
                    "FROM recipients r INDEXED BY recipients_ready JOIN messages m ON m.id = r.message "
                    "WHERE r.state = 'queued' AND r.next_attempt <= ? "
                    "AND (r.next_attempt, r.id) > (?, ?) "
                    f"{skip_domains} ORDER BY r.next_attempt, r.id LIMIT ?",
                    (*params, want),
                ).fetchall()
                if not rows:
                    break
                for row in rows:
                    last = (row["next_attempt"], row["id"])
                    rec = dict(row)
                    domain = rec["domain"]
                    if domain in blocked:
                        continue
                    reason = skip(rec["address"]) if skip else None
                    if reason:
                        conn.execute(
                            "UPDATE recipients SET state = 'suppressed', last_reply = ?, updated_at = ? "
                            "WHERE id = ?",
                            (f"suppressed: {reason}", now, rec["id"]),
                        )
                        self._event(conn, "suppressed", rec["id"], reason=reason)
                        log.info(
                            "event=suppressed message=%s recipient=%s address=%s reason=%r",
                            rec["message"],
                            rec["id"],
                            rec["address"],
                            reason,
                        )
                        continue
                    if domain in remaining:
                        remaining[domain] -= 1
                        if remaining[domain] <= 0:
                            blocked.add(domain)
                    rec["envelope_from"] = envelope(rec) if envelope else rec["mail_from"]
                    conn.execute(
                        "UPDATE recipients SET state = 'submitting', envelope_from = ?, updated_at = ? "
                        "WHERE id = ?",
                        (rec["envelope_from"], now, rec["id"]),
                    )
                    conn.execute(
                        "INSERT INTO releases(recipient, at, domain) VALUES (?, ?, ?)",
                        (rec["id"], now, domain),
                    )
                    self._event(conn, "released", rec["id"])
                    taken.append(rec)
                    if len(taken) >= limit:
                        break
        return taken

    def give_back(self, recipient_ids: list[int], *, reason: str) -> None:
        """Return never-sent 'submitting' rows to 'queued' and forget their releases."""
        if not recipient_ids:
            return
        now = self.clock()
        with self.transaction(durable=False) as conn:
            for rid in recipient_ids:
                conn.execute(
                    "UPDATE recipients SET state = 'queued', updated_at = ?, last_reply = ? "
                    "WHERE id = ? AND state = 'submitting'",
                    (now, reason, rid),
                )
                conn.execute(
                    "DELETE FROM releases WHERE id = (SELECT max(id) FROM releases WHERE recipient = ?)",
                    (rid,),
                )

    def mark_submitted(self, recipient_id: int, reply: str) -> str | None:
        qid = queue_id_from_reply(reply)
        with self.transaction(durable=False) as conn:
            conn.execute(
                "UPDATE recipients SET state = 'submitted', postfix_qid = ?, last_reply = ?, "
                "attempts = attempts + 1, updated_at = ? WHERE id = ?",
                (qid, reply, self.clock(), recipient_id),
            )
            self._event(conn, "submitted", recipient_id, queue_id=qid, reply=reply, source="submission")
            if qid:
                apply_pending(conn, recipient_id, qid, self)
        return qid

    def mark_retry(self, recipient_id: int, reply: str, *, delay: float) -> None:
        now = self.clock()
        with self.transaction(durable=False) as conn:
            conn.execute(
                "UPDATE recipients SET state = 'queued', last_reply = ?, attempts = attempts + 1, "
                "next_attempt = ?, updated_at = ? WHERE id = ?",
                (reply, now + delay, now, recipient_id),
            )
            self._error(conn, recipient_id, f"retry in {delay:.0f}s: {reply}")
            self._deferred(
                conn, recipient_id, dsn=find_status(reply) or None, reply=reply, source="submission"
            )

    def mark_failed(self, recipient_id: int, reply: str) -> None:
        with self.transaction(durable=False) as conn:
            conn.execute(
                "UPDATE recipients SET state = 'failed', last_reply = ?, attempts = attempts + 1, "
                "updated_at = ? WHERE id = ?",
                (reply, self.clock(), recipient_id),
            )
            self._error(conn, recipient_id, f"failed: {reply}")
            dsn = find_status(reply)
            kind = classify(dsn, reply)
            self._event(
                conn, "bounced", recipient_id, dsn=dsn or None, reply=reply, kind=kind, source="submission"
            )

    # -- release ledger (read by bulkrelay.policy) -------------------------------------------

    def released_since(self, since: float, domain: str | None = None) -> int:
        if domain is None:
            return self._query("SELECT count(*) FROM releases WHERE at > ?", (since,))[0][0]
        return self._query("SELECT count(*) FROM releases WHERE domain = ? AND at > ?", (domain, since))[0][0]

    def oldest_release_since(self, since: float, domain: str | None = None) -> float | None:
        if domain is None:
            return self._query("SELECT min(at) FROM releases WHERE at > ?", (since,))[0][0]
        return self._query("SELECT min(at) FROM releases WHERE domain = ? AND at > ?", (domain, since))[0][0]

    def prune(self, *, before: float, events_before: float | None = None) -> None:
        """Forget releases and log observations older than ``before`` (they no longer count),
        and events older than ``events_before`` (``[events] keep_days``)."""
        with self.transaction() as conn:
            if events_before is not None:
                self._prune_events(conn, events_before)
            conn.execute("DELETE FROM releases WHERE at < ?", (before,))
            conn.execute("DELETE FROM postfix_seen WHERE at < ?", (before,))
            conn.execute(
                "DELETE FROM errors WHERE id <= (SELECT max(id) FROM errors) - ?",
                (ERRORS_KEPT,),
            )
