"""Delivery tracking: follow Postfix's log and apply each queue id's result to the queue.

Sources: the systemd journal (``journalctl -o json``, mail facility) or a syslog file such as
``/var/log/mail.log`` (rotation to ``mail.log.1`` is followed). The position (journal cursor or
file inode+offset) is kept in the queue database and stored only after the lines before it were
applied, so a restart (or a crash while applying) continues where it stopped without losing a
result; re-reading a line is harmless because results are applied idempotently.

Lines used::

    postfix/cleanup[..]: 4F1C2A: message-id=<...>                -> remembered (crash recovery)
    postfix/qmgr[..]: 4F1C2A: from=<bounces+...@...>, size=..    -> remembered (crash recovery)
    postfix/smtp[813]: Verified TLS connection established to mx.x[192.0.2.1]:25: TLSv1.3 with ...
    postfix/smtp[813]: 4F1C2A: to=<r@x>, relay=mx.x[192.0.2.1]:25, ..., dsn=2.0.0, status=sent (250 ...)
                                                                   -> delivered, TLS level "verified"
    postfix/smtp[..]: 4F1C2A: to=<r@x>, ..., dsn=4.4.1, status=deferred (...)      -> deferred
    postfix/smtp[..]: 4F1C2A: to=<r@x>, ..., dsn=5.1.1, status=bounced (host ...)  -> bounced

A hard bounce (as bulkrelay.bounces.classify judges it) puts the address on the suppression
list (``bulkrelay.suppression``).

TLS: with smtp_tls_loglevel >= 1 the smtp client logs one summary line per connection, new or
reused, before the results it delivers over it; the line has no queue id, so it is tied to the
results by the process (syslog identifier and pid) and the peer (``relay=``), and to the first
queue id that follows it. Its format (Postfix's tls_misc.c, ``tls_log_summary``)::

    {Anonymous|Untrusted|Trusted|Verified} TLS connection {established|reused} to
    host[address]:port: protocol with cipher name (bits/bits)[ key-exchange ...]

A delivery without such a line went out in clear text ("none"), or TLS logging is off.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from bulkrelay import suppression
from bulkrelay.bounces.classify import classify
from bulkrelay.queue import Queue, QueueUnavailable
from bulkrelay.ststesting import StsTestingLog

log = logging.getLogger("bulkrelay.tracking")

_SYSLOG = re.compile(r"\b(postfix[\w.-]*/[\w/.-]+)\[(\d+)\]: (.*)$")
_QID_MSG = re.compile(r"^([0-9A-Za-z]{5,}): (.*)$")
_RESULT = re.compile(
    r"^to=<(?P<to>[^>]*)>,.*?\bdsn=(?P<dsn>\d\.\d{1,3}\.\d{1,3}), "
    r"status=(?P<status>\w+)(?: \((?P<reply>.*)\))?$"
)
_FROM = re.compile(r"^from=<(?P<from>[^>]*)>")
_MID = re.compile(r"^message-id=(?P<mid><[^>]*>|\S+)")
_EXPIRED = re.compile(r"^from=<(?P<from>[^>]*)>, status=expired")
_RELAY = re.compile(r"\brelay=(?P<relay>[^,\s]+)")
_TLS = re.compile(
    r"^(?P<level>Anonymous|Untrusted|Trusted|Verified) TLS connection (?:established|reused) "
    r"to (?P<peer>\S+): "
)
TLS_SESSIONS_KEPT = 1000  # smtp processes remembered (Postfix runs at most default_process_limit)

BATCH = 500  # journal lines applied per cursor write
RETRY = 5.0  # seconds before tracking retries after QueueUnavailable

RESULT_STATES = {"sent": "delivered", "deferred": "deferred", "bounced": "bounced", "expired": "bounced"}
DELIVERY_AGENTS = {"smtp", "lmtp", "local", "virtual", "error", "discard", "pipe", "relay", "retry"}


@dataclass
class LogEvent:
    qid: str
    kind: str  # "message-id" | "from" | "result" | "tls" (qid "", value the level)
    value: str = ""
    address: str = ""
    state: str = ""
    dsn: str = ""
    reply: str = ""
    process: str = ""  # "postfix/smtp[813]": ties a TLS line to the results after it
    relay: str = ""  # result: relay=; tls: the peer


def parse_message(ident: str, message: str, pid: str = "") -> LogEvent | None:  # noqa: PLR0911
    """Parse one Postfix log message given its syslog identifier ("postfix/smtp") and pid."""
    program = ident.rsplit("/", 1)[-1]
    process = f"{ident}[{pid}]"
    if program in DELIVERY_AGENTS and (tls := _TLS.match(message.strip())):
        return LogEvent("", "tls", tls.group("level").lower(), process=process, relay=tls.group("peer"))
    m = _QID_MSG.match(message.strip())
    if not m:
        return None
    qid, rest = m.groups()
    if program == "cleanup":
        mid = _MID.match(rest)
        return LogEvent(qid, "message-id", mid.group("mid")) if mid else None
    if program == "qmgr":
        expired = _EXPIRED.match(rest)
        if expired:
            return LogEvent(qid, "result", state="bounced", dsn="5.4.7", reply="expired in the Postfix queue")
        frm = _FROM.match(rest)
        return LogEvent(qid, "from", frm.group("from")) if frm else None
    if program in DELIVERY_AGENTS:
        res = _RESULT.match(rest)
        if not res or res.group("status") not in RESULT_STATES:
            return None
        relay = _RELAY.search(rest)
        return LogEvent(
            qid,
            "result",
            address=res.group("to"),
            state=RESULT_STATES[res.group("status")],
            dsn=res.group("dsn"),
            reply=res.group("reply") or "",
            process=process,
            relay=relay.group("relay") if relay else "",
        )
    return None


def parse_syslog_line(line: str) -> LogEvent | None:
    m = _SYSLOG.search(line.rstrip("\n"))
    return parse_message(m.group(1), m.group(3), m.group(2)) if m else None


def parse_journal_line(line: str) -> tuple[LogEvent | None, str | None]:
    """(event, cursor) for one ``journalctl -o json`` line."""
    try:
        entry = json.loads(line)
    except ValueError:
        return None, None
    cursor = entry.get("__CURSOR")
    ident = entry.get("SYSLOG_IDENTIFIER") or ""
    message = entry.get("MESSAGE") or ""
    if isinstance(message, list):  # journald exports non-UTF-8 messages as byte arrays
        message = bytes(message).decode("utf-8", "replace")
    if not str(ident).startswith("postfix"):
        return None, cursor
    pid = entry.get("SYSLOG_PID") or entry.get("_PID") or ""
    return parse_message(str(ident), str(message), str(pid)), cursor


class Tracker:
    """Applies log events to the queue (and hard bounces to the suppression list)."""

    def __init__(
        self,
        queue: Queue,
        *,
        clock: Callable[[], float] = time.time,
        sts_testing: StsTestingLog | None = None,
    ):
        self.queue = queue
        self.clock = clock
        self.sts_testing = sts_testing  # None: MTA-STS off, nothing to report
        self.stats = {"delivered": 0, "deferred": 0, "bounced": 0, "lines": 0}
        # process -> [TLS level, peer, queue id of the first result after the TLS line]
        self.tls_sessions: OrderedDict[str, list[str]] = OrderedDict()
        suppression.ensure_schema(queue.connection)

    def tls_of(self, event: LogEvent) -> str:
        """How the delivery of a result was protected: the TLS line its process logged last for
        the same peer, unless that line already served another queue id; else "none"."""
        session = self.tls_sessions.get(event.process)
        if session is None or session[1] != event.relay or session[2] not in ("", event.qid):
            return "none"
        session[2] = event.qid
        return session[0]

    def handle(self, event: LogEvent | None) -> None:
        if event is None:
            return
        self.stats["lines"] += 1
        if event.kind == "tls":
            self.tls_sessions[event.process] = [event.value, event.relay, ""]
            self.tls_sessions.move_to_end(event.process)
            while len(self.tls_sessions) > TLS_SESSIONS_KEPT:
                self.tls_sessions.popitem(last=False)
            return
        if event.kind == "message-id":
            self.queue.note_postfix(event.qid, message_id=event.value)
            return
        if event.kind == "from":
            self.queue.note_postfix(event.qid, envelope_from=event.value)
            return
        tls = self.tls_of(event)
        row = self.queue.record_result(
            event.qid, event.address, state=event.state, dsn=event.dsn, reply=event.reply, tls=tls
        )
        if row is None:
            return
        self.stats[event.state] += 1
        level = logging.INFO if event.state == "delivered" else logging.WARNING
        log.log(
            level,
            "event=%s message=%s recipient=%s address=%s qid=%s dsn=%s tls=%s reply=%r",
            event.state,
            row["message"],
            row["id"],
            row["address"],
            event.qid,
            event.dsn,
            tls,
            event.reply,
        )
        if event.state == "delivered" and self.sts_testing is not None:
            self.sts_testing.note(row["address"], event.relay, tls)
        # Only a hard bounce says the address is bad; a 5.7.x block of the relay (blacklisting,
        # policy) says nothing about the customer and must not suppress valid addresses.
        if event.state == "bounced" and classify(event.dsn, event.reply) == "hard":
            self.suppress(row["address"], f"{event.dsn} {event.reply}")

    def suppress(self, address: str, reason: str) -> None:
        """Put a hard-bounced address on the suppression list (source "postfix-log")."""
        try:
            suppression.add(
                self.queue.connection, address, reason=reason[:500], source="postfix-log", now=self.clock()
            )
        except ValueError as exc:  # suppression.BadAddress: nothing to suppress
            log.warning("event=suppress_skipped address=%r reason=%r", address, str(exc))


class FileSource:
    """Reads new complete lines of a syslog file, following rotation to ``<path>.1``."""

    STATE_KEY = "tracking.file"

    def __init__(self, path: str, queue: Queue):
        self.path = path
        self.queue = queue
        self.inode: int | None = None
        self.offset = 0
        self.reload()

    def reload(self) -> None:
        """Go back to the stored position (after applying failed)."""
        saved = self.queue.get_state(self.STATE_KEY)
        state = json.loads(saved) if saved else {}
        self.inode = state.get("inode")
        self.offset = state.get("offset", 0)

    def _save(self) -> None:
        self.queue.set_state(self.STATE_KEY, json.dumps({"inode": self.inode, "offset": self.offset}))

    def _read_from(self, path: str, offset: int) -> tuple[list[str], int]:
        with open(path, "rb") as fh:
            fh.seek(offset)
            data = fh.read()
        end = data.rfind(b"\n") + 1
        lines = data[:end].decode("utf-8", "replace").splitlines()
        return lines, offset + end

    def read_available(self) -> list[str]:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return []
        lines: list[str] = []
        if self.inode is not None and st.st_ino != self.inode:
            # Rotated: finish the old file if it is still there as <path>.1, then start over.
            try:
                old = os.stat(self.path + ".1")
                if old.st_ino == self.inode:
                    lines, _ = self._read_from(self.path + ".1", self.offset)
            except FileNotFoundError:
                pass
            self.offset = 0
        elif st.st_size < self.offset:  # truncated in place (copytruncate)
            self.offset = 0
        self.inode = st.st_ino
        new, self.offset = self._read_from(self.path, self.offset)
        lines.extend(new)
        return lines

    def commit(self) -> None:
        """Store the position; called after the lines read so far have been applied."""
        self._save()

    def events(self) -> list[LogEvent]:
        return [e for e in (parse_syslog_line(line) for line in self.read_available()) if e]


class JournalSource:
    """Reads Postfix's journal entries (mail facility) after the saved cursor."""

    STATE_KEY = "tracking.journal.cursor"
    FIRST_RUN_SINCE = 86400

    def __init__(
        self, queue: Queue, *, journalctl: str = "journalctl", clock: Callable[[], float] = time.time
    ):
        self.queue = queue
        self.journalctl = journalctl
        self.clock = clock
        self.cursor = queue.get_state(self.STATE_KEY)

    def reload(self) -> None:
        """Go back to the stored cursor (after applying failed)."""
        self.cursor = self.queue.get_state(self.STATE_KEY)

    def command(self, *, follow: bool) -> list[str]:
        argv = [self.journalctl, "-o", "json", "--no-pager", "SYSLOG_FACILITY=2"]
        if self.cursor:
            argv.append(f"--after-cursor={self.cursor}")
        else:
            argv.append(f"--since=@{int(self.clock() - self.FIRST_RUN_SINCE)}")
        if follow:
            argv.append("--follow")
        return argv

    def take(self, lines: list[str]) -> list[LogEvent]:
        """Parse journal JSON lines and note the last cursor (stored by ``commit``)."""
        events = []
        for line in lines:
            event, cursor = parse_journal_line(line)
            if cursor:
                self.cursor = cursor
            if event:
                events.append(event)
        return events

    def commit(self) -> None:
        """Store the cursor; called after the entries read so far have been applied."""
        if self.cursor and self.cursor != self.queue.get_state(self.STATE_KEY):
            self.queue.set_state(self.STATE_KEY, self.cursor)

    async def catch_up(self) -> list[LogEvent]:
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.command(follow=False), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
            )
        except OSError as exc:
            log.error("event=tracking_unavailable journalctl=%s error=%r", self.journalctl, str(exc))
            return []
        out, err = await proc.communicate()
        if proc.returncode not in (0, 1) and err:
            log.warning("event=journal_read_failed rc=%s error=%r", proc.returncode, err.decode()[:300])
        return self.take(out.decode("utf-8", "replace").splitlines())


async def _read_batch(stream: asyncio.StreamReader, poll: float) -> tuple[list[str], bool]:
    """What the stream has now (up to BATCH lines, waiting at most ``poll`` for the first)."""
    lines: list[str] = []
    timeout = poll
    while len(lines) < BATCH:
        try:
            line = await asyncio.wait_for(stream.readline(), timeout)
        except TimeoutError:
            return lines, False
        if not line:
            return lines, True
        lines.append(line.decode("utf-8", "replace"))
        timeout = 0.05
    return lines, False


async def _follow_journal(source: JournalSource, tracker: Tracker, stop: asyncio.Event, poll: float) -> None:
    while not stop.is_set():
        try:
            proc = await asyncio.create_subprocess_exec(
                *source.command(follow=True),
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.DEVNULL,
            )
        except OSError as exc:
            # Tracking is down, sending is not: results are read once journalctl works again.
            log.error(
                "event=tracking_unavailable journalctl=%s error=%r retry_in=60", source.journalctl, str(exc)
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 60)
            continue
        assert proc.stdout is not None
        try:
            eof = False
            while not stop.is_set() and not eof:
                lines, eof = await _read_batch(proc.stdout, poll)
                for event in source.take(lines):
                    tracker.handle(event)
                if lines:
                    source.commit()
        finally:
            if proc.returncode is None:
                proc.terminate()
                await proc.wait()
        if not stop.is_set():
            log.warning("event=journal_follow_restart rc=%s", proc.returncode)
            await asyncio.sleep(poll)


async def follow(
    source: FileSource | JournalSource, tracker: Tracker, stop: asyncio.Event, *, poll: float = 1.0
) -> None:
    """Apply new log events until ``stop`` is set.

    When the queue cannot be written (locked past the busy timeout, disk full) the source goes
    back to its stored position and tries again later: no result is lost or skipped.
    """
    while not stop.is_set():
        try:
            if isinstance(source, JournalSource):
                await _follow_journal(source, tracker, stop, poll)
                return
            events = source.events()
            for event in events:
                tracker.handle(event)
            if events:
                source.commit()
        except QueueUnavailable as exc:
            log.error("event=tracking_queue_unavailable error=%r retry_in=%.0f", str(exc), RETRY)
            source.reload()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), RETRY)
            continue
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), poll)


def make_source(kind: str, path: str, queue: Queue, *, clock: Callable[[], float] = time.time):
    if kind == "file":
        return FileSource(path, queue)
    return JournalSource(queue, clock=clock)


async def catch_up(source: FileSource | JournalSource, tracker: Tracker) -> int:
    """Apply everything already in the log; returns the number of events."""
    events = await source.catch_up() if isinstance(source, JournalSource) else source.events()
    for event in events:
        tracker.handle(event)
    source.commit()
    return len(events)
