"""Enqueue: store one message for its recipients, adding Message-ID and Date when missing.

The application's reference (``X-Bulkrelay-Ref:``) is taken out of the message here, so it is
never sent, and kept in ``messages.ref``; without the header the reference is the Message-ID.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import re
import sqlite3
from collections.abc import Sequence
from typing import NamedTuple

from bulkrelay.queue.events import Events, intake_source
from bulkrelay.queue.storage import domain_of

log = logging.getLogger("bulkrelay.queue")

_HEADER_END = re.compile(rb"\r?\n\r?\n")


def _header_block(raw: bytes) -> bytes:
    match = _HEADER_END.search(raw)
    return raw[: match.start()] if match else raw


def _has_header(headers: bytes, name: bytes) -> bytes | None:
    pattern = re.compile(rb"^" + re.escape(name) + rb"[ \t]*:[ \t]*(.*(?:\r?\n[ \t].*)*)", re.I | re.M)
    match = pattern.search(headers)
    return match.group(1).strip() if match else None


# bulkrelay.message and the email package are imported where a message is stored, not with the
# queue: every `bulkrelay status` opens the queue, and they were a fifth of its imports (issue 16).
@functools.cache
def _ref_field() -> re.Pattern[bytes]:
    from bulkrelay.message import REF_HEADER  # noqa: PLC0415 - see above

    return re.compile(
        rb"^" + REF_HEADER.encode() + rb"[ \t]*:(?P<value>[^\n]*(?:\n[ \t][^\n]*)*)(?:\n|\Z)", re.I | re.M
    )


def take_ref(raw: bytes) -> tuple[bytes, str | None]:
    """(raw without its X-Bulkrelay-Ref: fields, the reference or None when there is none).

    Raises bulkrelay.message.BadMessage (a ValueError) for a malformed reference; the intake's
    validation refuses those first, with the same reason."""
    from bulkrelay.message import read_ref  # noqa: PLC0415 - see _ref_field

    match = _HEADER_END.search(raw)
    end = match.start() + (2 if raw[match.start() : match.start() + 1] == b"\r" else 1) if match else len(raw)
    head = raw[:end]
    found = _ref_field().search(head)
    if found is None:
        return raw, None
    body = memoryview(raw)[end:]  # copied once, by the join
    return b"".join((_ref_field().sub(b"", head), body)), read_ref(found.group("value"))


_TRACE = re.compile(rb"(?:(?:Received|Return-Path)[ \t]*:.*\r?\n(?:[ \t].*\r?\n)*)*", re.I)


def ensure_ids(raw: bytes, mail_from: str, *, now: float) -> tuple[bytes, str]:
    """Add Message-ID and Date when missing, below the trace headers (Received:, Return-Path:)
    at the top, as RFC 5322 3.6.7 wants them first; return (raw, message_id)."""
    import email.utils  # noqa: PLC0415 - see _ref_field

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
    if not added:
        return raw, message_id  # no copy of a 200 KB body for nothing (a mmap and its page faults)
    at = _TRACE.match(raw).end()
    return b"".join((raw[:at], added, memoryview(raw)[at:])), message_id  # one copy of the body


class Submission(NamedTuple):
    """One message handed to the queue: what ``Enqueue.enqueue`` takes."""

    raw: bytes
    mail_from: str
    recipients: list[str]
    source: str


class _Prepared(NamedTuple):
    body: bytes
    mail_from: str
    recipients: list[str]
    source: str
    message_id: str
    ref: str


class Enqueue(Events):
    """Intake's side of the queue: one transaction per message, or per group of messages."""

    def enqueue(self, raw: bytes, mail_from: str, recipients: list[str], *, source: str) -> int:
        """Store one message for its recipients; returns the message id after COMMIT.

        Adds Message-ID and Date when missing, takes out X-Bulkrelay-Ref: (``take_ref``) and
        writes one ``accepted`` event per recipient. Duplicate recipients (same address) are
        stored once. Raises ValueError for an empty recipient list or a malformed reference and
        QueueUnavailable when the database cannot commit.
        """
        (result,) = self.enqueue_group([Submission(raw, mail_from, recipients, source)])
        if isinstance(result, ValueError):
            raise result
        return result

    def enqueue_group(self, group: Sequence[Submission]) -> list[int | ValueError]:
        """Store several messages in ONE transaction, so they share one COMMIT (one fsync).

        Returns, in order, each message's id, or the ValueError that refused it (no recipient,
        malformed reference: judged before anything is written, so it refuses only that
        message). A database error refuses all of them: QueueUnavailable is raised after the
        ROLLBACK, and none of the group is stored.
        """
        now = self.clock()
        prepared: list[_Prepared | ValueError] = []
        for item in group:
            try:
                prepared.append(_prepare(item, now))
            except ValueError as exc:
                prepared.append(exc)
        if all(isinstance(p, ValueError) for p in prepared):
            return list(prepared)  # type: ignore[arg-type]
        with self.transaction() as conn:
            results = [p if isinstance(p, ValueError) else self._insert(conn, p, now) for p in prepared]
        for p, msg in zip(prepared, results, strict=True):
            if not isinstance(p, ValueError):
                log.info(
                    "event=enqueued message=%s recipients=%d size=%d source=%s message_id=%s ref=%r",
                    msg,
                    len(p.recipients),
                    len(p.body),
                    p.source,
                    p.message_id,
                    p.ref,
                )
        return results

    def _insert(self, conn: sqlite3.Connection, p: _Prepared, now: float) -> int:
        cur = conn.execute(
            "INSERT INTO messages(mail_from, message_id, source, size, created_at, body, ref) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (p.mail_from, p.message_id, p.source, len(p.body), now, p.body, p.ref),
        )
        msg = cur.lastrowid
        assert msg is not None
        conn.executemany(
            "INSERT INTO recipients(message, address, domain, next_attempt, created_at, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            [(msg, r, domain_of(r), now, now, now) for r in p.recipients],
        )
        ids = [r[0] for r in conn.execute("SELECT id FROM recipients WHERE message = ? ORDER BY id", (msg,))]
        self._events(conn, "accepted", ids, source=intake_source(p.source))
        return msg


def _prepare(item: Submission, now: float) -> _Prepared:
    """The message as stored (Message-ID and Date added, reference taken out), or ValueError."""
    unique = list(dict.fromkeys(r.strip() for r in item.recipients if r.strip()))
    if not unique:
        raise ValueError("a message needs at least one recipient")
    raw, ref = take_ref(item.raw)
    body, message_id = ensure_ids(raw, item.mail_from, now=now)
    return _Prepared(body, item.mail_from, unique, item.source, message_id, ref or message_id)
