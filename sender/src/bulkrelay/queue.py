"""The durable queue: one SQLite database (WAL) holding messages, recipients and release history.

A message body is stored once; each recipient has its own row and state machine::

    queued -> submitting -> submitted (Postfix queue id) -> delivered | deferred | bounced
                        \\-> failed (5xx at submission)        queued -> suppressed

``submitting`` is written durably before a recipient's DATA is sent. A row still in that state
after a crash is ambiguous (did Postfix take it?) and is resolved from the Postfix log before
anything is resent (see ``bulkrelay.service``).

Built for 1M+ recipients: picking the next batch walks a partial index of ready rows in
(next_attempt, id) order, and per-state counts live in a table kept current by triggers, so
neither ``take`` nor ``status`` scans the recipients table.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import email.utils
import logging
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

log = logging.getLogger("bulkrelay.queue")

STATES = ("queued", "submitting", "submitted", "delivered", "deferred", "bounced", "failed", "suppressed")
# States in which a recipient is finished from the sender's point of view (no further action).
FINAL_STATES = ("delivered", "bounced", "failed", "suppressed")

BUSY_TIMEOUT = 5.0  # seconds a write waits for another writer before QueueUnavailable

SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY,
    mail_from TEXT NOT NULL,
    message_id TEXT NOT NULL,
    source TEXT NOT NULL,
    size INTEGER NOT NULL,
    created_at REAL NOT NULL,
    body BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS recipients (
    id INTEGER PRIMARY KEY,
    message INTEGER NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    address TEXT NOT NULL,
    domain TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'queued',
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    envelope_from TEXT,
    postfix_qid TEXT,
    dsn TEXT,
    last_reply TEXT
);
CREATE INDEX IF NOT EXISTS recipients_ready ON recipients(next_attempt, id) WHERE state = 'queued';
CREATE INDEX IF NOT EXISTS recipients_state ON recipients(state, id);
CREATE INDEX IF NOT EXISTS recipients_message ON recipients(message);
CREATE INDEX IF NOT EXISTS recipients_qid ON recipients(postfix_qid) WHERE postfix_qid IS NOT NULL;
CREATE TABLE IF NOT EXISTS state_counts (state TEXT PRIMARY KEY, n INTEGER NOT NULL);
CREATE TRIGGER IF NOT EXISTS recipients_count_ins AFTER INSERT ON recipients BEGIN
    INSERT INTO state_counts(state, n) VALUES (NEW.state, 1)
        ON CONFLICT(state) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER IF NOT EXISTS recipients_count_del AFTER DELETE ON recipients BEGIN
    UPDATE state_counts SET n = n - 1 WHERE state = OLD.state;
END;
CREATE TRIGGER IF NOT EXISTS recipients_count_upd AFTER UPDATE OF state ON recipients
    WHEN OLD.state <> NEW.state BEGIN
    UPDATE state_counts SET n = n - 1 WHERE state = OLD.state;
    INSERT INTO state_counts(state, n) VALUES (NEW.state, 1)
        ON CONFLICT(state) DO UPDATE SET n = n + 1;
END;
-- One row per recipient released to Postfix: the release policy's persistent memory.
CREATE TABLE IF NOT EXISTS releases (
    id INTEGER PRIMARY KEY,
    recipient INTEGER NOT NULL,
    at REAL NOT NULL,
    domain TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS releases_at ON releases(at);
CREATE INDEX IF NOT EXISTS releases_domain ON releases(domain, at);
CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS errors (
    id INTEGER PRIMARY KEY,
    at REAL NOT NULL,
    recipient INTEGER,
    message INTEGER,
    address TEXT,
    reason TEXT NOT NULL
);
-- Queue ids seen in the Postfix log with their Message-ID and envelope sender, so rows left in
-- 'submitting' by a crash can be matched to what Postfix really accepted.
CREATE TABLE IF NOT EXISTS postfix_seen (
    qid TEXT PRIMARY KEY,
    message_id TEXT,
    envelope_from TEXT,
    at REAL NOT NULL,
    -- a result logged before the row knew its queue id (applied when it learns it)
    result_address TEXT,
    result_state TEXT,
    result_dsn TEXT,
    result_reply TEXT
);
CREATE INDEX IF NOT EXISTS postfix_seen_from ON postfix_seen(envelope_from);
CREATE INDEX IF NOT EXISTS postfix_seen_mid ON postfix_seen(message_id);
"""

_QUEUED_AS = re.compile(r"queued as ([0-9A-Za-z]+)")
_HEADER_END = re.compile(rb"\r?\n\r?\n")
ERRORS_KEPT = 200


class QueueUnavailable(Exception):
    """The queue could not commit (disk full, database locked past the busy timeout, read-only)."""


def domain_of(address: str) -> str:
    return address.rpartition("@")[2].lower()


def queue_id_from_reply(reply: str) -> str | None:
    """The Postfix queue id in a "250 2.0.0 Ok: queued as ABC123" reply, or None."""
    match = _QUEUED_AS.search(reply)
    return match.group(1) if match else None


def _header_block(raw: bytes) -> bytes:
    match = _HEADER_END.search(raw)
    return raw[: match.start()] if match else raw


def _has_header(headers: bytes, name: bytes) -> bytes | None:
    pattern = re.compile(rb"^" + re.escape(name) + rb"[ \t]*:[ \t]*(.*(?:\r?\n[ \t].*)*)", re.I | re.M)
    match = pattern.search(headers)
    return match.group(1).strip() if match else None


_TRACE = re.compile(rb"(?:(?:Received|Return-Path)[ \t]*:.*\r?\n(?:[ \t].*\r?\n)*)*", re.I)


def ensure_ids(raw: bytes, mail_from: str, *, now: float) -> tuple[bytes, str]:
    """Add Message-ID and Date when missing, below the trace headers (Received:, Return-Path:)
    at the top, as RFC 5322 3.6.7 wants them first; return (raw, message_id)."""
    headers = _header_block(raw)
    newline = b"\r\n" if b"\r\n" in headers or not headers else b"\n"
    added = b""
    found = _has_header(headers, b"Message-ID")
    if found:
        message_id = found.decode("ascii", "replace")
    else:
        domain = domain_of(mail_from) or "bulkrelay.invalid"
        message_id = email.utils.make_msgid(domain=domain)
        added += b"Message-ID: " + message_id.encode("ascii") + newline
    if _has_header(headers, b"Date") is None:
        date = email.utils.format_datetime(dt.datetime.fromtimestamp(now, dt.UTC))
        added += b"Date: " + date.encode("ascii") + newline
    at = _TRACE.match(raw).end() if added else 0
    return raw[:at] + added + raw[at:], message_id


class Queue:
    """The sender's SQLite queue. Safe to share between threads (calls are serialised)."""

    def __init__(
        self, path: str | Path, *, clock: Callable[[], float] = time.time, busy_timeout: float = BUSY_TIMEOUT
    ):
        """Open (and create) the queue. ``busy_timeout``: seconds to wait for another writer."""
        self.path = str(path)
        self.clock = clock
        self._lock = threading.RLock()
        created = self.path != ":memory:" and not os.path.exists(self.path)
        try:
            if self.path != ":memory:":
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            self.connection = sqlite3.connect(
                self.path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
            )
            self.connection.row_factory = sqlite3.Row
            self.connection.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
            self.connection.execute("PRAGMA journal_mode = WAL")
            # FULL: a COMMIT survives power loss too, which is what "250 after commit" promises.
            self.connection.execute("PRAGMA synchronous = FULL")
            self._durable = True
            self.connection.execute("PRAGMA foreign_keys = ON")
            with self._lock:
                self.connection.executescript("BEGIN IMMEDIATE;" + SCHEMA + "COMMIT;")
                self._migrate()
        except (sqlite3.Error, OSError) as exc:
            raise QueueUnavailable(f"queue {self.path}: {exc}") from exc
        if created:
            self._give_to_directory_owner()

    def _give_to_directory_owner(self) -> None:
        """A database root creates in the service's state directory belongs to the service user.

        (``bulkrelay pause`` run by root before the first start would otherwise leave a root-owned
        queue the unprivileged service cannot write.)
        """
        if os.geteuid() != 0:
            return
        owner = os.stat(Path(self.path).parent)
        if owner.st_uid == 0:
            return
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.chown(self.path + suffix, owner.st_uid, owner.st_gid)

    # -- plumbing ---------------------------------------------------------------------------
    def _migrate(self) -> None:
        """Columns added after the first release of the schema."""
        have = {r[1] for r in self.connection.execute("PRAGMA table_info(postfix_seen)")}
        for column in ("result_address", "result_state", "result_dsn", "result_reply"):
            if column not in have:
                self.connection.execute(f"ALTER TABLE postfix_seen ADD COLUMN {column} TEXT")

    @contextmanager
    def transaction(self, *, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE .. COMMIT; any sqlite error becomes QueueUnavailable after ROLLBACK.

        ``durable=False`` skips the fsync at COMMIT (WAL, synchronous=NORMAL): the change
        survives a killed process but not a power loss until the next durable commit syncs
        the log. Used for the per-recipient results after submission, where a lost update only
        sends the row back to 'submitting' (resolved from the Postfix log).
        """
        with self._lock:
            conn = self.connection
            if durable != self._durable:
                conn.execute(f"PRAGMA synchronous = {'FULL' if durable else 'NORMAL'}")
                self._durable = durable
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise QueueUnavailable(f"queue {self.path}: cannot begin a transaction: {exc}") from exc
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise QueueUnavailable(f"queue {self.path}: {exc}") from exc
                raise

    def _query(self, sql: str, params: Iterable[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            try:
                return self.connection.execute(sql, tuple(params)).fetchall()
            except sqlite3.OperationalError as exc:
                raise QueueUnavailable(f"queue {self.path}: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            self.connection.close()

    # -- intake -----------------------------------------------------------------------------
    def enqueue(self, raw: bytes, mail_from: str, recipients: list[str], *, source: str) -> int:
        """Store one message for its recipients; returns the message id after COMMIT.

        Adds Message-ID and Date when missing. Duplicate recipients (same address) are stored
        once. Raises ValueError for an empty recipient list and QueueUnavailable when the
        database cannot commit.
        """
        unique = list(dict.fromkeys(r.strip() for r in recipients if r.strip()))
        if not unique:
            raise ValueError("a message needs at least one recipient")
        now = self.clock()
        body, message_id = ensure_ids(raw, mail_from, now=now)
        with self.transaction() as conn:
            cur = conn.execute(
                "INSERT INTO messages(mail_from, message_id, source, size, created_at, body) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (mail_from, message_id, source, len(body), now, body),
            )
            msg = cur.lastrowid
            conn.executemany(
                "INSERT INTO recipients(message, address, domain, next_attempt, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                [(msg, r, domain_of(r), now, now, now) for r in unique],
            )
        log.info(
            "event=enqueued message=%s recipients=%d size=%d source=%s message_id=%s",
            msg,
            len(unique),
            len(body),
            source,
            message_id,
        )
        assert msg is not None
        return msg

    # -- reading ----------------------------------------------------------------------------
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

    def body(self, message_id: int) -> bytes:
        rows = self._query("SELECT body FROM messages WHERE id = ?", (message_id,))
        if not rows:
            raise KeyError(message_id)
        return bytes(rows[0][0])

    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(STATES, 0)
        for row in self._query("SELECT state, n FROM state_counts"):
            counts[row["state"]] = row["n"]
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

    def next_ready_at(self) -> float | None:
        """When the earliest queued recipient becomes ready (None when nothing is queued)."""
        # One step down the ready index (a plain min() over state = 'queued' may scan them all).
        rows = self._query(
            "SELECT next_attempt FROM recipients INDEXED BY recipients_ready "
            "WHERE state = 'queued' ORDER BY next_attempt LIMIT 1"
        )
        return rows[0][0] if rows else None

    def submitting(self) -> list[dict]:
        rows = self._query(
            "SELECT r.*, m.message_id AS message_id_header FROM recipients r JOIN messages m "
            "ON m.id = r.message WHERE r.state = 'submitting' ORDER BY r.id"
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

    # -- release ledger (read by bulkrelay.policy) -------------------------------------------
    def released_since(self, since: float, domain: str | None = None) -> int:
        if domain is None:
            return self._query("SELECT count(*) FROM releases WHERE at > ?", (since,))[0][0]
        return self._query("SELECT count(*) FROM releases WHERE domain = ? AND at > ?", (domain, since))[0][0]

    def oldest_release_since(self, since: float, domain: str | None = None) -> float | None:
        if domain is None:
            return self._query("SELECT min(at) FROM releases WHERE at > ?", (since,))[0][0]
        return self._query("SELECT min(at) FROM releases WHERE domain = ? AND at > ?", (domain, since))[0][0]

    def prune(self, *, before: float) -> None:
        """Forget releases and log observations older than ``before`` (they no longer count)."""
        with self.transaction() as conn:
            conn.execute("DELETE FROM releases WHERE at < ?", (before,))
            conn.execute("DELETE FROM postfix_seen WHERE at < ?", (before,))
            conn.execute(
                "DELETE FROM errors WHERE id <= (SELECT max(id) FROM errors) - ?",
                (ERRORS_KEPT,),
            )

    # -- release ----------------------------------------------------------------------------
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
            if qid:
                self._apply_pending(conn, recipient_id, qid)
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

    def mark_failed(self, recipient_id: int, reply: str) -> None:
        with self.transaction(durable=False) as conn:
            conn.execute(
                "UPDATE recipients SET state = 'failed', last_reply = ?, attempts = attempts + 1, "
                "updated_at = ? WHERE id = ?",
                (reply, self.clock(), recipient_id),
            )
            self._error(conn, recipient_id, f"failed: {reply}")

    def _error(self, conn: sqlite3.Connection, recipient_id: int, reason: str) -> None:
        conn.execute(
            "INSERT INTO errors(at, recipient, message, address, reason) "
            "SELECT ?, id, message, address, ? FROM recipients WHERE id = ?",
            (self.clock(), reason, recipient_id),
        )

    # -- results from the Postfix log and from DSNs -------------------------------------------
    def record_result(self, qid: str, address: str, *, state: str, dsn: str, reply: str) -> dict | None:
        """Apply a Postfix log result (delivered/deferred/bounced) to the row with that queue id.

        Returns the updated row, or None when the queue id is not ours. A final state is never
        overwritten by 'deferred' (log lines can be read twice after a restart).
        """
        if state not in ("delivered", "deferred", "bounced"):
            raise ValueError(f"unknown result state {state!r}")
        with self.transaction(durable=False) as conn:
            rows = conn.execute(
                "SELECT id, message, address, state FROM recipients WHERE postfix_qid = ?", (qid,)
            ).fetchall()
            match = [r for r in rows if r["address"].lower() == address.lower()] or rows
            if not match:
                # Not (yet) one of our rows: keep it for a row that learns this queue id later
                # (a 'submitting' row resolved from the log after a crash).
                conn.execute(
                    "INSERT INTO postfix_seen"
                    "(qid, at, result_address, result_state, result_dsn, result_reply) "
                    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(qid) DO UPDATE SET "
                    "result_address = excluded.result_address, result_state = excluded.result_state, "
                    "result_dsn = excluded.result_dsn, result_reply = excluded.result_reply "
                    "WHERE coalesce(result_state, 'deferred') = 'deferred'",
                    (qid, self.clock(), address, state, dsn, reply),
                )
                return None
            row = dict(match[0])
            if state == "deferred" and row["state"] in FINAL_STATES:
                return row
            conn.execute(
                "UPDATE recipients SET state = ?, dsn = ?, last_reply = ?, updated_at = ? WHERE id = ?",
                (state, dsn, reply, self.clock(), row["id"]),
            )
            if state in ("bounced", "deferred"):
                self._error(conn, row["id"], f"{state} dsn={dsn}: {reply}")
            row["state"] = state
            return row

    def record_bounce(self, recipient_id: int, *, status: str, diagnostic: str, kind: str) -> None:
        """Apply a DSN or complaint read from the bounce mailbox (bulkrelay.bounces).

        kind "hard" -> 'bounced'; "soft" -> 'deferred' unless the row is already final;
        "complaint" keeps the delivery state and records the complaint as the last reply.
        """
        if kind not in ("hard", "soft", "complaint"):
            raise ValueError(f"kind must be hard, soft or complaint, not {kind!r}")
        now = self.clock()
        with self.transaction() as conn:
            row = conn.execute("SELECT state FROM recipients WHERE id = ?", (recipient_id,)).fetchone()
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

    def _apply_pending(self, conn: sqlite3.Connection, recipient_id: int, qid: str) -> dict | None:
        """Apply a result the log showed for ``qid`` before this row knew its queue id."""
        seen = conn.execute(
            "SELECT result_state, result_dsn, result_reply FROM postfix_seen "
            "WHERE qid = ? AND result_state IS NOT NULL",
            (qid,),
        ).fetchone()
        if seen is None:
            return None
        conn.execute(
            "UPDATE recipients SET state = ?, dsn = ?, last_reply = ?, updated_at = ? WHERE id = ?",
            (seen["result_state"], seen["result_dsn"], seen["result_reply"], self.clock(), recipient_id),
        )
        return {"state": seen["result_state"], "dsn": seen["result_dsn"], "reply": seen["result_reply"]}

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
                return self._apply_pending(conn, recipient_id, qid) if changed else None
            else:
                conn.execute(
                    "UPDATE recipients SET state = 'queued', next_attempt = ?, updated_at = ?, "
                    "last_reply = 'resent: not found in the Postfix log after a restart' "
                    "WHERE id = ? AND state = 'submitting'",
                    (now, now, recipient_id),
                )
        return None

    # -- operator actions -------------------------------------------------------------------
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
