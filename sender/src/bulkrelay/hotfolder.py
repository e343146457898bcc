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

Only regular files are read, never through a link (lstat, then O_NOFOLLOW and an fstat of the
open descriptor); anything else named *.eml goes to rejected/ unread. Reasons and log lines
never quote a rejected file's content.

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
import errno
import hashlib
import logging
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bulkrelay.message import BadMessage
from bulkrelay.normalise import accept
from bulkrelay.queue import Queue, QueueUnavailable

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
    stuck: list[str] = field(default_factory=list)  # could not be moved; skipped from now on

    def total(self) -> int:
        return len(self.done) + len(self.rejected) + len(self.retry) + len(self.stuck)


def ensure_layout(root: str | Path) -> Path:
    root = Path(root)
    for sub in SUBDIRS:
        (root / sub).mkdir(parents=True, exist_ok=True)
    return root


def pending(root: str | Path, stuck: Stuck | None = None) -> list[Path]:
    """Entries waiting in incoming/ named *.eml, oldest first, whatever their type (links,
    directories, FIFOs are listed too, so they can be rejected). Never follows a link (lstat)."""
    incoming = Path(root) / "incoming"
    try:
        entries = [p for p in incoming.iterdir() if p.suffix == ".eml" and not p.name.startswith(".")]
    except FileNotFoundError:
        return []
    found = []
    for p in entries:
        try:
            st = os.lstat(p)
        except OSError:
            continue
        if stuck is not None and stuck.holds(p, st):
            continue
        found.append((st.st_mtime, p.name, p))
    return [p for _, _, p in sorted(found)]


class Stuck:
    """Entries that could not be moved out of incoming/: logged once, then skipped (never read)
    until something changes them (another inode or mtime under that name)."""

    def __init__(self) -> None:
        self._entries: dict[str, tuple[int, int, int]] = {}

    @staticmethod
    def _key(st: os.stat_result) -> tuple[int, int, int]:
        return (st.st_dev, st.st_ino, st.st_mtime_ns)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def holds(self, path: Path, st: os.stat_result) -> bool:
        return self._entries.get(path.name) == self._key(st)

    def add(self, path: Path, reason: str, error: OSError) -> None:
        try:
            st = os.lstat(path)
        except OSError:
            return
        self._entries[path.name] = self._key(st)
        log.error(
            "event=hotfolder.stuck file=%s reason=%r error=%r action='left in incoming/, not read "
            "again; move or delete it by hand (check the permissions of incoming/ and rejected/)'",
            path.name,
            reason,
            error.strerror or str(error),
        )


_KINDS = (
    (stat.S_ISLNK, "a symbolic link"),
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def not_regular(st: os.stat_result) -> str | None:
    """Why an entry with this (l)stat is not taken, or None for a plain regular file."""
    kind = next((name for test, name in _KINDS if test(st.st_mode)), None)
    if kind is None and not stat.S_ISREG(st.st_mode):
        kind = "not a regular file"
    if kind:
        return f"is {kind}; only regular files are taken: write the file into tmp/ and rename it in"
    if st.st_nlink != 1:
        # a hard link can be another file's content (a key, a mailbox) under a harmless name
        return f"has {st.st_nlink} hard links; write a new file into tmp/ and rename it in"
    return None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _free_name(directory: Path, name: str) -> Path:
    target = directory / name
    n = 1
    while os.path.lexists(target) or os.path.lexists(f"{target}.reason"):
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


class _Refused(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class HotFolder:
    """One hot folder bound to one queue (``bulkrelay.queue.Queue``)."""

    def __init__(
        self,
        root: str | Path,
        queue: Any,
        *,
        max_size: int,
        clock: Callable[[], float] = time.time,
        stuck: Stuck | None = None,
        from_domains: tuple[str, ...] = (),
    ):
        self.root = ensure_layout(root)
        self.queue = queue
        self.max_size = max_size
        self.clock = clock
        self.stuck = stuck if stuck is not None else Stuck()
        self.from_domains = from_domains
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
        """The file's bytes, or None after rejecting it (not a regular file, too big,
        unreadable), when it vanished or when it could not be moved."""
        try:
            return self._read_regular(path)
        except FileNotFoundError:
            return None
        except _Refused as refused:
            self._reject(path, refused.reason)
            return None

    def _read_regular(self, path: Path) -> bytes:
        """lstat first, then open with O_NOFOLLOW|O_NONBLOCK and check that the descriptor is
        the same regular file: a link, FIFO or device swapped in between is never read."""
        st = os.lstat(path)
        problem = not_regular(st)
        if problem:
            raise _Refused(problem)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                raise
            if exc.errno == errno.ELOOP:  # became a link after the lstat
                raise _Refused("is a symbolic link; only regular files are taken") from None
            raise _Refused(f"cannot read the file ({exc.strerror}); check its permissions") from None
        with os.fdopen(fd, "rb") as f:
            opened = os.fstat(f.fileno())
            problem = not_regular(opened)
            if problem is None and (opened.st_dev, opened.st_ino) != (st.st_dev, st.st_ino):
                problem = "was replaced while being opened; rename finished files in once"
            if problem:
                raise _Refused(problem)
            try:
                data = f.read(self.max_size + 1)
            except OSError as exc:
                raise _Refused(f"cannot read the file ({exc.strerror}); check its permissions") from None
        if len(data) > self.max_size:
            raise _Refused(
                f"file is {max(len(data), opened.st_size)} bytes or more, over the {self.max_size}-byte "
                "limit; send large files as links or raise [intake] max_message_size"
            )
        return data

    def _reject(self, path: Path, reason: str) -> str:
        """Move to rejected/ with the reason: "rejected", or "stuck" when it cannot be moved."""
        try:
            reject(self.root, path, reason)
        except OSError as exc:
            self.stuck.add(path, reason, exc)
            return "stuck"
        return "rejected"

    def process(self, path: Path) -> str:
        """Handle one entry of incoming/; returns "done", "rejected" or "stuck" (could not be
        moved), or raises QueueUnavailable."""
        raw = self._read(path)
        if raw is None:
            return "stuck" if path.name in self.stuck else "rejected"
        try:
            accepted = accept(
                raw, max_size=self.max_size, envelope_from_content=True, from_domains=self.from_domains
            )
        except BadMessage as exc:
            return self._reject(path, exc.reason)
        if accepted.repairs:
            log.info("event=hotfolder.repaired file=%s changes=%r", path.name, "; ".join(accepted.repairs))
        digest = hashlib.sha256(raw).hexdigest()
        return self._queue_once(path, digest, accepted.raw, accepted.mail_from, accepted.recipients)

    def _queue_once(self, path: Path, digest: str, body: bytes, mail_from: str, recipients: list[str]) -> str:
        claim = self._claim(digest, path.name)
        if claim is not None:
            message = claim["message"] or self._committed_message(digest, claim["after_message"])
            if message is not None and claim["name"] != path.name:
                return self._reject(
                    path,
                    f"identical to {claim['name']}, already queued as message {message}; "
                    "change the content (e.g. a new Message-ID) to send it again",
                )
            if message is not None:
                if claim["message"] is None:
                    self._record(digest, message)
                return self._to_done(path, message, retried_after_crash=1)
        message = self.queue.enqueue(body, mail_from, recipients, source=f"hotfolder:{digest}")
        self._record(digest, message)
        return self._to_done(path, message, recipients=len(recipients), size=len(body))

    def _to_done(self, path: Path, message: int, **fields: int) -> str:
        try:
            target = _move(path, self.root / "done")
        except OSError as exc:
            # queued already (the claim knows): a restart finds the claim and only moves it
            self.stuck.add(path, f"queued as message {message} but cannot be moved to done/", exc)
            return "stuck"
        extra = " ".join(f"{k}={v}" for k, v in fields.items())
        log.info(
            "event=hotfolder.done file=%s message=%s %s moved_to=%s", path.name, message, extra, target.name
        )
        return "done"

    def scan(self) -> ScanResult:
        result = ScanResult()
        files = pending(self.root, self.stuck)
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
            else:
                result.stuck.append(path.name)
        return result


def scan_hotfolder(
    config: Any, queue: Any = None, *, clock: Callable[[], float] = time.time, stuck: Stuck | None = None
) -> ScanResult:
    """One pass over ``[hotfolder] path``/incoming (called every few seconds by ``bulkrelay serve``).

    With ``queue=None`` the scan opens its own connection to ``[queue] path`` - only when there
    are files waiting - and closes it again, so it can run in a worker thread.
    """
    root = config.hotfolder.path
    if not root:
        return ScanResult()
    ensure_layout(root)
    if not pending(root, stuck):
        return ScanResult()
    own = queue is None
    if own:
        try:
            queue = Queue(config.queue.path, clock=clock)
        except QueueUnavailable as exc:
            log.error("event=hotfolder.queue_unavailable reason=%r left_in=incoming", str(exc))
            return ScanResult(retry=[p.name for p in pending(root)])
    try:
        folder = HotFolder(
            root,
            queue,
            max_size=config.intake.max_message_size,
            clock=clock,
            stuck=stuck,
            from_domains=config.intake.from_domains,
        )
        return folder.scan()
    finally:
        if own:
            queue.close()


async def run_hotfolder(config: Any, stop: asyncio.Event, *, every: float = SCAN_EVERY) -> None:
    """Scan every ``every`` seconds until ``stop`` (``bulkrelay serve``'s hot folder component).

    Each scan runs in a worker thread with its own queue connection, so file I/O and a locked
    database never stall the event loop. An exception ends this coroutine: the service stops
    and systemd restarts it (see ``bulkrelay.service.run_components``).
    """
    stuck = Stuck()
    while not stop.is_set():
        await asyncio.to_thread(scan_hotfolder, config, None, stuck=stuck)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every)
