"""What a parsed bounce does to the queue and the suppression list.

Only failures count, and only the VERP recipient's own: in a DSN that reports several
recipients, the one behind the VERP token is judged by the entry that names it (as
Final-Recipient or Original-Recipient), or by the bounce as a whole when it names no address.
Warnings (``Action: delayed``) are logged as ``delayed`` and change nothing.

* hard bounce -> recipient row 'bounced', address suppressed at once, for good;
* soft bounce -> recipient row updated, event recorded; suppressed when ``soft_limit`` soft
  bounces for the address fall within ``soft_window_days``, for ``soft_expiry_days`` (a full
  mailbox gets emptied, a block gets lifted);
* complaint (ARF) -> complaint recorded on the row, address suppressed for good;
* success notices, auto-replies and human mail -> nothing.

Only bounces whose VERP token verifies are acted upon (``Analysis.recipient_id``): a bounce
without one cannot be told from a forged one, so it is logged as ``unmatched``.

Every processed bounce is remembered by a key (its Message-ID, or a digest of its bytes) in
the same database, so a bounce read twice - a crash between the database commit and the IMAP
move - never counts twice.
"""

from __future__ import annotations

import hashlib
import logging
import re
import sqlite3
from dataclasses import dataclass

from bulkrelay import suppression
from bulkrelay.bounces.parse import Analysis, Failure
from bulkrelay.config import BouncesConfig

log = logging.getLogger("bulkrelay.bounces")

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS bounce_events (id INTEGER PRIMARY KEY, address TEXT NOT NULL, "
    "recipient INTEGER, kind TEXT NOT NULL, status TEXT NOT NULL, at REAL NOT NULL)",
    "CREATE INDEX IF NOT EXISTS bounce_events_address ON bounce_events(address, at)",
    "CREATE TABLE IF NOT EXISTS bounce_processed (key TEXT PRIMARY KEY, category TEXT NOT NULL, "
    "recipient INTEGER, outcome TEXT NOT NULL, at REAL NOT NULL)",
)
DAY = 86400.0


@dataclass(frozen=True)
class Policy:
    """Soft-bounce policy; the defaults are the [bounces] section's (bulkrelay.config)."""

    soft_limit: int = BouncesConfig().soft_limit
    soft_window_days: int = BouncesConfig().soft_window_days
    # a suppression for soft bounces lapses after this many days (0 = never); hard bounces and
    # complaints never lapse
    soft_expiry_days: int = BouncesConfig().soft_expiry_days


def ensure_schema(conn: sqlite3.Connection) -> None:
    suppression.ensure_schema(conn)
    for statement in SCHEMA:
        conn.execute(statement)
    if conn.in_transaction:
        conn.commit()


def message_key(raw: bytes, message_id: str) -> str:
    """A stable identity for one bounce message."""
    mid = re.sub(r"\s+", "", message_id or "")
    if mid:
        return "mid:" + mid[:300]
    return "sha256:" + hashlib.sha256(raw).hexdigest()


def already_processed(conn: sqlite3.Connection, key: str) -> bool:
    return conn.execute("SELECT 1 FROM bounce_processed WHERE key = ?", (key,)).fetchone() is not None


def _same(a: str, b: str) -> bool:
    # receivers often fold the local part's case in their reports: the VERP token already
    # ties the bounce to this recipient, so case does not tell two recipients apart here
    return a.strip().strip("<>").lower() == b.strip().strip("<>").lower()


def concerns(failure: Failure, address: str) -> bool:
    """Whether a reported failure is about ``address`` (the VERP token's recipient): it names
    that address (as the failed or the original recipient), or it names no address at all."""
    if not failure.address:
        return True
    return any(_same(a, address) for a in (failure.address, failure.original) if a)


def _short(text: str, limit: int = 200) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def apply(queue, analysis: Analysis, *, key: str, policy: Policy, now: float) -> str:
    """Act on one analysed message; returns the outcome word that is logged and stored.

    ``queue`` is a ``bulkrelay.queue.Queue`` (``recipient``, ``record_bounce``,
    ``connection``). Outcomes: suppressed, soft-counted, complaint, notice, delayed,
    other-recipient, unmatched, unknown-recipient, duplicate, ignored.
    """
    conn: sqlite3.Connection = queue.connection
    if not analysis.is_bounce:
        return "ignored"
    if already_processed(conn, key):
        return "duplicate"
    rid = analysis.recipient_id
    row = queue.recipient(rid) if rid is not None else None
    outcome: str
    suppress: tuple[str, str] | None = None  # (reason, source)
    event: tuple[str, str] | None = None
    address = row["address"] if row else ""
    if analysis.category == "notice":
        outcome = "notice"
    elif rid is None:
        outcome = "unmatched"
    elif row is None:
        outcome = "unknown-recipient"
    elif analysis.category == "complaint":
        queue.record_bounce(
            rid, status="complaint", diagnostic=f"ARF {analysis.feedback_type}", kind="complaint"
        )
        suppress = (f"complaint (ARF {analysis.feedback_type})", "arf")
        outcome = "complaint"
    else:
        mine = [f for f in analysis.failures if concerns(f, address)]
        failure = analysis.worst([f for f in mine if f.action == "failed"])
        if failure is None:
            # only warnings (Action: delayed) for this recipient, or failures of someone else
            outcome = "delayed" if mine else "other-recipient"
            return _commit(
                conn, analysis, key=key, rid=rid, address=address, event=None, suppress=None,
                outcome=outcome, policy=policy, now=now,
            )  # fmt: skip
        queue.record_bounce(
            rid, status=failure.status or "", diagnostic=_short(failure.diagnostic, 500), kind=failure.kind
        )
        if failure.kind == "hard":
            suppress = (
                f"hard bounce {failure.status}: {_short(failure.diagnostic)}",
                f"dsn:{analysis.format}",
            )
            outcome = "suppressed"
        else:
            event = ("soft", failure.status or "")
            outcome = "soft-counted"

    return _commit(
        conn,
        analysis,
        key=key,
        rid=rid,
        address=address,
        event=event,
        suppress=suppress,
        outcome=outcome,
        policy=policy,
        now=now,
    )


def _commit(conn, analysis, *, key, rid, address, event, suppress, outcome, policy, now) -> str:
    """One transaction: soft event and count, suppression, processed marker."""
    expires_at: float | None = None
    conn.execute("BEGIN IMMEDIATE")
    try:
        if event is not None:
            normalized = suppression.normalize(address)
            conn.execute(
                "INSERT INTO bounce_events(address, recipient, kind, status, at) VALUES (?, ?, ?, ?, ?)",
                (normalized, rid, event[0], event[1], now),
            )
            count = conn.execute(
                "SELECT count(*) FROM bounce_events WHERE address = ? AND kind = 'soft' AND at > ?",
                (normalized, now - policy.soft_window_days * DAY),
            ).fetchone()[0]
            if policy.soft_limit > 0 and count >= policy.soft_limit:
                last = event[1] or "no status"
                suppress = (
                    f"soft bounces: {count} in {policy.soft_window_days} days, last {last}",
                    f"dsn:{analysis.format}",
                )
                if policy.soft_expiry_days > 0:
                    expires_at = now + policy.soft_expiry_days * DAY
                outcome = "suppressed"
        existing = suppression.lookup(conn, address, now=now) if address else None
        if existing is not None and existing["expires_at"] is None and expires_at is not None:
            suppress = None  # already suppressed for good: a soft bounce never shortens that
        if suppress is not None and address:
            suppression.add(
                conn, address, reason=suppress[0], source=suppress[1], expires_at=expires_at, now=now
            )
        conn.execute(
            "INSERT INTO bounce_processed(key, category, recipient, outcome, at) VALUES (?, ?, ?, ?, ?)",
            (key, analysis.category, rid, outcome, now),
        )
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return outcome
