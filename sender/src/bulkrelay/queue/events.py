"""Events: the delivery-events outbox, one row per state change of a recipient.

Every part that changes a recipient's state writes its event with ``_event`` (or ``_events``,
``_deferred``, ``_result``) on the connection of its own transaction, so the change and its
event are committed together or not at all: a crash can never leave a state change without its
event, nor an event for a change that did not happen. The webhook loop and ``bulkrelay events``
read the outbox by cursor (the row id, AUTOINCREMENT so it is never reused after pruning).

Where each type comes from:

- ``accepted``: ``enqueue``, one per recipient (source intake, hotfolder or cli). Nothing is
  suppressed at intake: the suppression list is consulted at release, so "suppressed on
  intake" is the ``suppressed`` event ``take`` writes, with the list's reason;
- ``released`` and ``suppressed`` (reason): ``take``;
- ``submitted`` (queue id): ``mark_submitted`` (source submission) and ``resolve_submitting``
  (source log); a result the log showed before the row knew its queue id follows as its own
  event (``apply_pending``);
- ``deferred``: a 4xx at submission (``mark_retry``, source submission) or a deferral in the
  Postfix log (``record_result``); written the first time, then at most once a day per
  recipient (``DEFERRED_EVERY``), since Postfix logs a deferral at every retry;
- ``delivered`` (with ``tls``: how the delivery was protected, ``queue.TLS_LEVELS``), ``bounced``:
  the Postfix log (``record_result``); ``bounced`` also for a 5xx
  at submission (``mark_failed``) and for a DSN from the bounce mailbox (``record_bounce``,
  source dsn, kind hard or soft). ``kind`` says what the failure means for the address,
  as ``bulkrelay.bounces.classify`` judges it: hard = the address is bad (it is suppressed),
  soft = temporary, or about the message or the relay. A soft DSN leaves the recipient
  deferred (not finished); the recipient's state (``bulkrelay message show``) says which;
- ``expired``: a bounce with status 5.4.7 (delivery time expired, RFC 3463), which is how the
  tracker reports Postfix's "status=expired" (it gave up after maximal_queue_lifetime);
- ``complained``: an ARF report (``record_bounce``, source dsn).

Re-applying a result that is already recorded (a log line read twice after a restart, the DSN
Postfix sends for a bounce it already logged: same state, same status) writes no event.

Deliberately no event: ``give_back`` and a 'submitting' row resolved to "not in the Postfix
log" return a recipient to 'queued' before Postfix had it; it is released again later, which
writes a second ``released``. The operator's ``retry`` queues again (the next release says so)
and ``drop`` deletes a message (its events stay until pruned): neither is a delivery outcome.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Collection, Iterable

from bulkrelay.bounces.classify import classify
from bulkrelay.queue.storage import Storage
from bulkrelay.suppression import iso_time

EVENT_TYPES = (
    "accepted",
    "released",
    "submitted",
    "delivered",
    "deferred",
    "bounced",
    "complained",
    "suppressed",
    "expired",
)
# The optional keys of an event (null when they do not apply); see docs of `bulkrelay events`.
DETAIL_KEYS = ("queue_id", "dsn", "reply", "kind", "source", "reason", "tls")
DEFERRED_EVERY = 86400.0  # seconds between two `deferred` events of one recipient
EXPIRED_DSN = "5.4.7"
# Message.source prefix -> the event's source (smtp:<peer>, hotfolder:<digest>, cli:<file>)
_INTAKE_SOURCES = {"smtp": "intake", "hotfolder": "hotfolder", "cli": "cli"}

_INSERT = (
    "INSERT INTO events(event_id, at, type, message, recipient, ref, address, data) "
    "SELECT ?, ?, ?, r.message, r.id, m.ref, r.address, json_set(?, '$.message_id', m.message_id) "
    "FROM recipients r JOIN messages m ON m.id = r.message WHERE r.id = ?"
)
_COLUMNS = "id, event_id, at, type, ref, address, data"


def intake_source(message_source: str) -> str:
    """The ``accepted`` event's source for a message's stored source ("smtp:10.0.0.5" -> intake)."""
    prefix = message_source.partition(":")[0]
    return _INTAKE_SOURCES.get(prefix, prefix)


def bounce_type(dsn: str | None) -> str:
    """``expired`` for a bounce whose status says the delivery time expired, else ``bounced``."""
    return "expired" if dsn == EXPIRED_DSN else "bounced"


def payload(row: sqlite3.Row) -> dict:
    """One event as the JSON object `bulkrelay events --json` prints and a webhook carries."""
    data = json.loads(row["data"])
    event = {
        "id": row["event_id"],
        "cursor": row["id"],
        "type": row["type"],
        "at": iso_time(row["at"]),
        "timestamp": row["at"],
        "ref": row["ref"],
        "message_id": data.get("message_id"),
        "recipient": row["address"],
    }
    event.update((key, data.get(key)) for key in DETAIL_KEYS)
    return event


def event_id(at: float) -> str:
    """A new event's id, 32 hex digits: milliseconds since the epoch (12), then 80 random bits.

    Ids sort by time, so each insert lands on the right edge of the unique index of
    ``events.event_id``; a random UUID landed on a random leaf, and once that index outgrew
    SQLite's page cache every enqueue of 100k recipients cost more than the one before
    (docs/benchmarks.md). Receivers de-duplicate on the id; it is unique as a UUID4 was.
    """
    return f"{int(at * 1000):012x}{os.urandom(10).hex()}"


class Events(Storage):
    """The outbox: written inside the other parts' transactions, read by cursor."""

    # -- writing (always on the caller's transaction) ---------------------------------------

    def _events(self, conn: sqlite3.Connection, type_: str, recipient_ids: Iterable[int], **detail) -> None:
        """One ``type_`` event per recipient, in the caller's transaction."""
        if type_ not in EVENT_TYPES or not set(detail) <= set(DETAIL_KEYS):
            raise ValueError(f"bad event {type_!r} {sorted(detail)}")
        data = json.dumps({k: v for k, v in detail.items() if v is not None})
        now = self.clock()
        conn.executemany(_INSERT, [(event_id(now), now, type_, data, rid) for rid in recipient_ids])

    def _event(self, conn: sqlite3.Connection, type_: str, recipient_id: int, **detail) -> None:
        self._events(conn, type_, (recipient_id,), **detail)

    def _deferred(self, conn: sqlite3.Connection, recipient_id: int, **detail) -> None:
        """A ``deferred`` event unless this recipient had one within ``DEFERRED_EVERY``."""
        last = conn.execute(
            "SELECT max(at) FROM events WHERE recipient = ? AND type = 'deferred'", (recipient_id,)
        ).fetchone()[0]
        if last is None or self.clock() - last >= DEFERRED_EVERY:
            self._event(conn, "deferred", recipient_id, **detail)

    def _result(
        self,
        conn: sqlite3.Connection,
        recipient_id: int,
        *,
        state: str,
        dsn: str,
        reply: str,
        queue_id: str,
        tls: str | None = None,
    ) -> None:
        """The event of a result read from the Postfix log (delivered with its TLS level,
        deferred or bounced)."""
        detail = {"queue_id": queue_id, "dsn": dsn or None, "reply": reply or None, "source": "log"}
        if state == "deferred":
            self._deferred(conn, recipient_id, **detail)
        elif state == "bounced":
            self._event(conn, bounce_type(dsn), recipient_id, kind=classify(dsn, reply), **detail)
        else:
            self._event(conn, state, recipient_id, tls=tls, **detail)

    def _prune_events(self, conn: sqlite3.Connection, before: float) -> None:
        """Delete events older than ``before``: walks the oldest ids only, never the whole table."""
        conn.execute(
            "DELETE FROM events WHERE id < coalesce("
            "(SELECT id FROM events WHERE at >= ? ORDER BY id LIMIT 1), "
            "(SELECT max(id) FROM events) + 1)",
            (before,),
        )

    # -- reading ----------------------------------------------------------------------------

    def events_since(
        self,
        cursor: int,
        *,
        limit: int = 500,
        ref: str | None = None,
        types: Collection[str] | None = None,
    ) -> list[dict]:
        """Events after ``cursor`` in cursor order (payload dicts), optionally of one ref/types."""
        where, params = ["id > ?"], [cursor]
        if ref is not None:
            where.append("ref = ?")
            params.append(ref)
        if types:
            where.append(f"type IN ({','.join('?' * len(types))})")
            params.extend(types)
        rows = self._query(
            f"SELECT {_COLUMNS} FROM events WHERE {' AND '.join(where)} ORDER BY id LIMIT ?",  # noqa: S608
            (*params, limit),
        )
        return [payload(r) for r in rows]

    def recipient_events(self, recipient_id: int) -> list[dict]:
        """Every kept event of one recipient, oldest first."""
        rows = self._query(
            f"SELECT {_COLUMNS} FROM events WHERE recipient = ? ORDER BY id",  # noqa: S608
            (recipient_id,),
        )
        return [payload(r) for r in rows]

    def messages_with_ref(self, ref: str) -> list[int]:
        """Ids of the messages stored with this application reference, oldest first."""
        return [r[0] for r in self._query("SELECT id FROM messages WHERE ref = ? ORDER BY id", (ref,))]

    def last_event_cursor(self) -> int:
        return self._query("SELECT coalesce(max(id), 0) FROM events")[0][0]

    def oldest_event_after(self, cursor: int) -> float | None:
        rows = self._query("SELECT at FROM events WHERE id > ? ORDER BY id LIMIT 1", (cursor,))
        return rows[0][0] if rows else None

    def count_events_after(self, cursor: int) -> int:
        return self._query("SELECT count(*) FROM events WHERE id > ?", (cursor,))[0][0]
