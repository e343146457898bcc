"""Storage: the schema and its migrations, the connection, transactions, WAL checkpoints (a
``Checkpointer`` thread runs them beside the COMMITs) and the shared errors log.

Every other part of the queue (``enqueue``, ``release``, ``reconcile``, ``commands``, ``events``)
is a class built on ``Storage``: it reaches the database only through ``transaction()`` (writes,
BEGIN IMMEDIATE .. COMMIT) and ``_query()`` (reads), and holds the SQL statements of its own
concern.
The schema lives here because it is the contract they all share.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

STATES = ("queued", "submitting", "submitted", "delivered", "deferred", "bounced", "failed", "suppressed")
# States in which a recipient is finished from the sender's point of view (no further action).
FINAL_STATES = ("delivered", "bounced", "failed", "suppressed")
# How a delivery was protected, from the TLS summary line Postfix's smtp logs before it
# (smtp_tls_loglevel >= 1; bulkrelay.tracking): none = no TLS line, clear text; anonymous = no
# server certificate; untrusted = a certificate that no trusted CA signed; trusted = a CA-signed
# certificate whose name was not checked; verified = name (or DANE/fingerprint) checked.
# Deliveries recorded before the tracking knew this count as "unknown".
TLS_LEVELS = ("none", "anonymous", "untrusted", "trusted", "verified")

BUSY_TIMEOUT = 5.0  # seconds a write waits for another writer before QueueUnavailable
# WAL pages (4 KiB; SQLite's default is 1000) after which a COMMIT of a connection that leaves
# checkpoints to a ``Checkpointer`` checkpoints too. Under a steady stream the checkpointer never
# finds the WAL fully copied with no COMMIT since, so the WAL is not restarted from its
# beginning until it reaches this size: the WAL file stays at up to ~16 MB, and readers search
# a larger WAL index.
CHECKPOINT_BACKSTOP_PAGES = 4_000

log = logging.getLogger("bulkrelay.queue")

SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY,
    mail_from TEXT NOT NULL,
    message_id TEXT NOT NULL,
    source TEXT NOT NULL,
    size INTEGER NOT NULL,
    created_at REAL NOT NULL,
    -- before body: reading a column stored after a large body walks its overflow pages
    ref TEXT,
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
    last_reply TEXT,
    tls TEXT
);
CREATE INDEX IF NOT EXISTS recipients_ready ON recipients(next_attempt, id) WHERE state = 'queued';
CREATE INDEX IF NOT EXISTS recipients_state ON recipients(state, id);
CREATE INDEX IF NOT EXISTS recipients_message ON recipients(message);
CREATE INDEX IF NOT EXISTS recipients_qid ON recipients(postfix_qid) WHERE postfix_qid IS NOT NULL;
CREATE TABLE IF NOT EXISTS state_counts (state TEXT PRIMARY KEY, n INTEGER NOT NULL);
-- Deliveries by TLS level since the queue was created (a counter: never decreases; trigger in
-- Storage._migrate, after the tls column exists).
CREATE TABLE IF NOT EXISTS tls_counts (tls TEXT PRIMARY KEY, n INTEGER NOT NULL);
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
-- Webhook delivery (`bulkrelay webhooks`, queue/webhooks.py): per webhook, the outbox cursor of
-- the last event handled (moved only after the receiver's 2xx, so a crash resends, never loses)
-- and the retry state of the batch at its head.
CREATE TABLE IF NOT EXISTS webhook_cursors (
    webhook TEXT PRIMARY KEY,
    cursor INTEGER NOT NULL,
    failures INTEGER NOT NULL DEFAULT 0,
    failures_total INTEGER NOT NULL DEFAULT 0,
    failing_since REAL,
    next_attempt REAL NOT NULL DEFAULT 0,
    last_error TEXT,
    updated_at REAL NOT NULL
);
-- Events a webhook gave up on: rejected by the receiver (a 4xx other than 408/429) or 'dead'
-- (still failing after [delivery] dead_after). Reported by status and the audit.
CREATE TABLE IF NOT EXISTS webhook_parked (
    id INTEGER PRIMARY KEY,
    webhook TEXT NOT NULL,
    cursor INTEGER NOT NULL,
    event_id TEXT NOT NULL,
    reason TEXT NOT NULL,
    status INTEGER,
    reply TEXT,
    at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS webhook_parked_webhook ON webhook_parked(webhook, id);
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
    result_reply TEXT,
    result_tls TEXT
);
CREATE INDEX IF NOT EXISTS postfix_seen_from ON postfix_seen(envelope_from);
CREATE INDEX IF NOT EXISTS postfix_seen_mid ON postfix_seen(message_id);
-- The delivery-events outbox: one row per state change of a recipient, written in the same
-- transaction as the change. id is the cursor (`bulkrelay events --since`); event_id is what a
-- receiver de-duplicates on. AUTOINCREMENT: an id is never reused after pruning.
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL UNIQUE,
    at REAL NOT NULL,
    type TEXT NOT NULL,
    message INTEGER,
    recipient INTEGER,
    ref TEXT,
    address TEXT,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_ref ON events(ref, id);
CREATE INDEX IF NOT EXISTS events_recipient ON events(recipient, id);
"""

ERRORS_KEPT = 200


class QueueUnavailable(Exception):
    """The queue could not commit (disk full, database locked past the busy timeout, read-only)."""


def domain_of(address: str) -> str:
    return address.rpartition("@")[2].lower()


class Storage:
    """The queue's SQLite connection. Safe to share between threads (calls are serialised)."""

    def __init__(
        self, path: str | Path, *, clock: Callable[[], float] = time.time, busy_timeout: float = BUSY_TIMEOUT
    ):
        """Open (and create) the queue. ``busy_timeout``: seconds to wait for another writer."""
        self.path = str(path)
        self.clock = clock
        self._lock = threading.RLock()
        self._after_commit: Callable[[], None] | None = None
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
                # One transaction: two processes opening an old database never both migrate it.
                self.connection.executescript("BEGIN IMMEDIATE;" + SCHEMA)
                try:
                    self._migrate()
                    self.connection.execute("COMMIT")
                finally:
                    if self.connection.in_transaction:
                        self.connection.execute("ROLLBACK")
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

    def _migrate(self) -> None:
        """Columns added after the first release of the schema (in the opening transaction)."""
        have = {r[1] for r in self.connection.execute("PRAGMA table_info(postfix_seen)")}
        for column in ("result_address", "result_state", "result_dsn", "result_reply", "result_tls"):
            if column not in have:
                self.connection.execute(f"ALTER TABLE postfix_seen ADD COLUMN {column} TEXT")
        if "tls" not in {r[1] for r in self.connection.execute("PRAGMA table_info(recipients)")}:
            # Deliveries recorded before the tracking read TLS: counted, as "unknown".
            self.connection.execute("ALTER TABLE recipients ADD COLUMN tls TEXT")
            self.connection.execute(
                "INSERT INTO tls_counts(tls, n) SELECT 'unknown', count(*) FROM recipients "
                "WHERE state = 'delivered' HAVING count(*) > 0"
            )
        self.connection.execute(
            "CREATE TRIGGER IF NOT EXISTS recipients_tls_count AFTER UPDATE OF state ON recipients "
            "WHEN NEW.state = 'delivered' AND OLD.state <> 'delivered' BEGIN "
            "INSERT INTO tls_counts(tls, n) VALUES (coalesce(NEW.tls, 'unknown'), 1) "
            "ON CONFLICT(tls) DO UPDATE SET n = n + 1; END"
        )
        if "ref" not in {r[1] for r in self.connection.execute("PRAGMA table_info(messages)")}:
            # The application reference; a message stored before it existed is known by its
            # Message-ID, as one without an X-Bulkrelay-Ref: header is.
            self.connection.execute("ALTER TABLE messages ADD COLUMN ref TEXT")
            self.connection.execute("UPDATE messages SET ref = message_id")
        self.connection.execute("CREATE INDEX IF NOT EXISTS messages_ref ON messages(ref)")

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
                if self._after_commit is not None:
                    self._after_commit()
            except BaseException as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise QueueUnavailable(f"queue {self.path}: {exc}") from exc
                raise

    def defer_checkpoints(self, backstop_pages: int) -> None:
        """Let another connection's :meth:`checkpoint` copy the WAL into the database file.

        SQLite checkpoints inside the COMMIT that takes the WAL past ``wal_autocheckpoint``
        pages (1000 by default), in the committing thread. Raised to ``backstop_pages``, that
        happens only when the other connection falls behind, so the WAL stays bounded.
        Durability does not depend on checkpoints: a COMMIT is on disk once its WAL frames are
        synced (synchronous = FULL), and a WAL with frames not yet checkpointed is replayed when
        the database is next opened after a crash.
        """
        with self._lock:
            self.connection.execute(f"PRAGMA wal_autocheckpoint = {int(backstop_pages)}")

    def checkpoint_elsewhere(self, checkpointer: Checkpointer) -> None:
        """Leave the checkpoints of this connection's COMMITs to ``checkpointer`` (poked after
        each), up to CHECKPOINT_BACKSTOP_PAGES: none runs inside one of its COMMITs."""
        self.defer_checkpoints(CHECKPOINT_BACKSTOP_PAGES)
        self._after_commit = checkpointer.poke

    def checkpoint(self) -> None:
        """Copy committed WAL frames into the database file: PASSIVE, so it neither waits for
        nor blocks readers and writers (frames a reader still needs stay for a later run)."""
        with self._lock:
            self.connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()

    def _query(self, sql: str, params: Iterable[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            try:
                return self.connection.execute(sql, tuple(params)).fetchall()
            except sqlite3.OperationalError as exc:
                raise QueueUnavailable(f"queue {self.path}: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            self.connection.close()

    def _error(self, conn: sqlite3.Connection, recipient_id: int, reason: str) -> None:
        conn.execute(
            "INSERT INTO errors(at, recipient, message, address, reason) "
            "SELECT ?, id, message, address, ? FROM recipients WHERE id = ?",
            (self.clock(), reason, recipient_id),
        )


class Checkpointer:
    """Copies committed WAL frames into the database file (``Storage.checkpoint``) on a thread
    with its own connection, at most every ``every`` seconds after a COMMIT poked it.

    A checkpoint (its page copies and two fsyncs) inside a COMMIT stops the committing thread:
    the service's event loop between a message's result and its connection's next ".", the
    intake's commit thread between two groups. Here one checkpoint also covers the COMMITs of
    ``every`` seconds, copying a page they all changed once. A failed or late checkpoint loses
    nothing (see ``Storage.defer_checkpoints``): the WAL only grows, up to the backstop.
    """

    def __init__(self, open_storage: Callable[[], Storage], *, every: float = 0.05, name: str = "checkpoint"):
        self._open_storage = open_storage
        self._every = every
        self._poked = threading.Event()
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def poke(self) -> None:
        """A COMMIT happened (cheap: only the first poke of a round wakes the thread)."""
        if not self._poked.is_set():
            self._poked.set()

    def _run(self) -> None:
        store = None
        while not self._closing.is_set():
            self._poked.wait()
            self._poked.clear()
            try:
                if store is None:
                    store = self._open_storage()
                store.checkpoint()
            except Exception as exc:  # the committers' own checkpoints take over at the backstop
                log.warning("event=checkpoint_failed error=%r", f"{type(exc).__name__}: {exc}")
            self._closing.wait(self._every)  # one checkpoint for the COMMITs meanwhile
        if store is not None:
            store.close()

    def close(self) -> None:
        """End the thread (after the checkpoint it may be running) and close its connection."""
        self._closing.set()
        self._poked.set()
        self._thread.join()
