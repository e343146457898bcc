"""The hot folder: applications drop finished ``.eml`` files, the sender queues them.

Protocol (documented for application authors in roles/relay_sender/README.md)::

    <path>/tmp/        write the file here first (same file system), any name
    <path>/incoming/   then rename(2) it in as NAME.eml - the rename is atomic, so the sender
                       never sees half a file; names starting with "." and other extensions
                       are ignored
    <path>/done/       NAME.eml after its message was committed to the queue
    <path>/rejected/   NAME.eml plus NAME.eml.reason (one line: the problem and the fix)

The envelope comes from the message: sender = the From: address, recipients = To, Cc and Bcc
(the Bcc: header is removed before queueing). A file leaves ``incoming/`` only after its enqueue
committed, so a crash or a full disk leaves it there and the next scan retries it.

Duplicates: each file's SHA-256 is claimed in the table ``hotfolder_files`` (in the queue
database) before the enqueue, and the enqueue records ``source = "hotfolder:<sha256>"`` in the
same transaction as the message. A retry after a crash finds the claim; if a message with that
source was committed after the claim, the file is moved to ``done/`` without queueing it again.
A byte-identical file under a different name is rejected as a duplicate (change anything, e.g.
the Message-ID, to send the same content twice on purpose).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bulkrelay.message import BadMessage, envelope_from_headers, strip_bcc, validate

log = logging.getLogger("bulkrelay.hotfolder")

SUBDIRS = ("tmp", "incoming", "done", "rejected")
SCAN_EVERY = 2.0  # seconds between scans of incoming/

SCHEMA = """
CREATE TABLE IF NOT EXISTS hotfolder_files (
    digest TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    claimed_at REAL NOT NULL,
    after_message INTEGER NOT NULL,
    message INTEGER
);
"""


@dataclass
class ScanResult:
    done: list[str] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    retry: list[str] = field(default_factory=list)  # left in incoming/ (queue unavailable)

    def total(self) -> int:
        return len(self.done) + len(self.rejected) + len(self.retry)


def ensure_layout(root: str | Path) -> Path:
    root = Path(root)
    for sub in SUBDIRS:
        (root / sub).mkdir(parents=True, exist_ok=True)
    return root


def pending(root: str | Path) -> list[Path]:
    """Files waiting in incoming/, oldest first."""
    incoming = Path(root) / "incoming"
    try:
        entries = [p for p in incoming.iterdir() if p.suffix == ".eml" and not p.name.startswith(".")]
    except FileNotFoundError:
        return []
    files = []
    for p in entries:
        try:
            if p.is_file():
                files.append((p.stat().st_mtime, p.name, p))
        except OSError:
            continue
    return [p for _, _, p in sorted(files)]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _free_name(directory: Path, name: str) -> Path:
    target = directory / name
    n = 1
    while target.exists() or Path(f"{target}.reason").exists():
        target = directory / f"{name}.{n}"
        n += 1
    return target


def _move(path: Path, directory: Path) -> Path:
    target = _free_name(directory, path.name)
    os.rename(path, target)
    _fsync_dir(directory)
    return target


def _write_reason(directory: Path, target: Path, reason: str) -> None:
    tmp = directory / f".{target.name}.reason.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(reason.replace("\n", " ") + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, f"{target}.reason")


def reject(root: Path, path: Path, reason: str) -> Path:
    """Move ``path`` to rejected/ with its .reason file (reason first, so it is never missing)."""
    rejected = root / "rejected"
    target = _free_name(rejected, path.name)
    _write_reason(rejected, target, reason)
    os.rename(path, target)
    _fsync_dir(rejected)
    log.warning("event=hotfolder.rejected file=%s reason=%r", path.name, reason)
    return target


class HotFolder:
    """One hot folder bound to one queue (``bulkrelay.queue.Queue``)."""

    def __init__(
        self, root: str | Path, queue: Any, *, max_size: int, clock: Callable[[], float] = time.time
    ):
        self.root = ensure_layout(root)
        self.queue = queue
        self.max_size = max_size
        self.clock = clock
        self._schema_ready = False

    def _ensure_schema(self) -> None:
        if not self._schema_ready:
            with self.queue.transaction() as conn:
                conn.execute(SCHEMA)
            self._schema_ready = True

    def _claim(self, digest: str, name: str) -> dict | None:
        """The existing claim for ``digest`` or None; creates a claim when there is none."""
        with self.queue.transaction() as conn:
            row = conn.execute(
                "SELECT digest, name, claimed_at, after_message, message FROM hotfolder_files "
                "WHERE digest = ?",
                (digest,),
            ).fetchone()
            if row is not None:
                return dict(
                    zip(("digest", "name", "claimed_at", "after_message", "message"), row, strict=True)
                )
            after = conn.execute("SELECT coalesce(max(id), 0) FROM messages").fetchone()[0]
            conn.execute(
                "INSERT INTO hotfolder_files(digest, name, claimed_at, after_message) VALUES (?, ?, ?, ?)",
                (digest, name, self.clock(), after),
            )
        return None

    def _committed_message(self, digest: str, after: int) -> int | None:
        """A message committed for this digest after the claim (crash between enqueue and record)."""
        with self.queue.transaction() as conn:
            row = conn.execute(
                "SELECT id FROM messages WHERE id > ? AND source = ? ORDER BY id LIMIT 1",
                (after, f"hotfolder:{digest}"),
            ).fetchone()
        return row[0] if row else None

    def _record(self, digest: str, message: int) -> None:
        with self.queue.transaction() as conn:
            conn.execute("UPDATE hotfolder_files SET message = ? WHERE digest = ?", (message, digest))

    def _read(self, path: Path) -> bytes | None:
        """The file's bytes, or None after rejecting it (too big, unreadable) or when it vanished."""
        try:
            size = path.stat().st_size
            if size > self.max_size:
                reject(
                    self.root,
                    path,
                    f"file is {size} bytes, over the {self.max_size}-byte limit; "
                    "send large files as links or raise [intake] max_message_size",
                )
                return None
            return path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            reject(self.root, path, f"cannot read the file ({exc.strerror}); check its permissions")
            return None

    def process(self, path: Path) -> str:
        """Handle one file from incoming/; returns "done" or "rejected", or raises QueueUnavailable."""
        raw = self._read(path)
        if raw is None:
            return "rejected"
        try:
            mail_from, recipients = envelope_from_headers(raw)
            body = strip_bcc(raw)
            validate(body, mail_from, recipients, max_size=self.max_size)
        except BadMessage as exc:
            reject(self.root, path, exc.reason)
            return "rejected"
        digest = hashlib.sha256(raw).hexdigest()
        claim = self._claim(digest, path.name)
        if claim is not None:
            message = claim["message"] or self._committed_message(digest, claim["after_message"])
            if message is not None and claim["name"] != path.name:
                reject(
                    self.root,
                    path,
                    f"identical to {claim['name']}, already queued as message {message}; "
                    "change the content (e.g. a new Message-ID) to send it again",
                )
                return "rejected"
            if message is not None:
                if claim["message"] is None:
                    self._record(digest, message)
                target = _move(path, self.root / "done")
                log.info("event=hotfolder.done file=%s message=%s retried_after_crash=1", path.name, message)
                return "done"
        message = self.queue.enqueue(body, mail_from, recipients, source=f"hotfolder:{digest}")
        self._record(digest, message)
        target = _move(path, self.root / "done")
        log.info(
            "event=hotfolder.done file=%s message=%s recipients=%d size=%d moved_to=%s",
            path.name,
            message,
            len(recipients),
            len(body),
            target.name,
        )
        return "done"

    def scan(self) -> ScanResult:
        from bulkrelay.queue import QueueUnavailable  # noqa: PLC0415

        result = ScanResult()
        files = pending(self.root)
        for i, path in enumerate(files):
            try:
                self._ensure_schema()
                outcome = self.process(path)
            except QueueUnavailable as exc:
                log.error(
                    "event=hotfolder.queue_unavailable file=%s reason=%r left_in=incoming",
                    path.name,
                    str(exc),
                )
                result.retry.extend(p.name for p in files[i:])
                break
            if outcome == "done":
                result.done.append(path.name)
            elif outcome == "rejected":
                result.rejected.append(path.name)
        return result


def scan_hotfolder(config: Any, queue: Any = None, *, clock: Callable[[], float] = time.time) -> ScanResult:
    """One pass over ``[hotfolder] path``/incoming (called every few seconds by ``bulkrelay serve``).

    With ``queue=None`` the scan opens its own connection to ``[queue] path`` - only when there
    are files waiting - and closes it again, so it can run in a worker thread.
    """
    root = config.hotfolder.path
    if not root:
        return ScanResult()
    ensure_layout(root)
    if not pending(root):
        return ScanResult()
    from bulkrelay.queue import Queue, QueueUnavailable  # noqa: PLC0415

    own = queue is None
    if own:
        try:
            queue = Queue(config.queue.path, clock=clock)
        except QueueUnavailable as exc:
            log.error("event=hotfolder.queue_unavailable reason=%r left_in=incoming", str(exc))
            return ScanResult(retry=[p.name for p in pending(root)])
    try:
        return HotFolder(root, queue, max_size=config.intake.max_message_size, clock=clock).scan()
    finally:
        if own:
            queue.close()


async def run_hotfolder(config: Any, stop: asyncio.Event, *, every: float = SCAN_EVERY) -> None:
    """Scan every ``every`` seconds until ``stop`` (``bulkrelay serve``'s hot folder component).

    Each scan runs in a worker thread with its own queue connection, so file I/O and a locked
    database never stall the event loop. An exception ends this coroutine: the service stops
    and systemd restarts it (see ``bulkrelay.service.run_components``).
    """
    while not stop.is_set():
        await asyncio.to_thread(scan_hotfolder, config, None)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every)
