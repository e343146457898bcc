"""Submission to the local Postfix: a small asyncio SMTP client and the batch submitter.

One SMTP transaction per recipient, because each recipient gets its own VERP envelope sender.
Connections are reused across transactions and batches (QUIT after 30 s idle). When the server
offers PIPELINING (Postfix does), MAIL, RCPT and DATA go in one write, and each message's final
"." goes out together with the next message's MAIL/RCPT/DATA: one round trip per message.
Per message on such a connection (``Submitter._stream``), in this order:

1. a large body (encoded once per message, without its final ".") goes out after the 354;
2. the results read so far, from every connection, are committed in one transaction, while
   the server reads that body (or earlier, while the server's next replies are on their way);
3. the final "." goes out with the next message's MAIL/RCPT/DATA (a small body with them);
4. the next body is read from the queue and encoded while the server answers.

So a connection never has more than one message whose "." was sent before its result was
committed: a crash leaves at most one ambiguous row per connection (see bulkrelay.service).
Replies are parsed from one receive buffer, so replies that arrive together cost one wait.

Outcomes per recipient:
- 2xx after the final "." -> 'submitted' with the Postfix queue id from "queued as ...";
- 4xx at any step -> back to 'queued' with exponential backoff;
- 5xx at any step -> 'failed' with the reply;
- connection lost before the final "." -> back to 'queued' (Postfix has nothing);
- connection lost after the final "." but before the reply -> left 'submitting': ambiguous,
  settled from the Postfix log (see ``bulkrelay.service.resolve_ambiguous``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import socket
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from bulkrelay.config import SubmitConfig
from bulkrelay.message import has_bare_lf
from bulkrelay.queue import Queue, queue_id_from_reply

log = logging.getLogger("bulkrelay.delivery")


WRITE_BUFFER_HIGH = 64 * 1024  # wait for the socket only when this much is still unsent
READ_CHUNK = 64 * 1024
REPLY_LIMIT = 64 * 1024  # an unfinished reply line longer than this is not SMTP
DOT = b".\r\n"
DOT_LOOK_BYTES = 2048  # ``_dot_line`` looks at one dot per this many bytes, then searches
ENVELOPE_STAGES = ("mail", "rcpt", "data")  # the replies to a pipelined ``SmtpClient.envelope``
SPLIT_BODY = 32 * 1024  # a smaller body goes out with its "." in one write (one segment)


class SmtpConnectionError(Exception):
    """The connection failed or was lost. ``after_data`` is True when the final "." was sent."""

    def __init__(self, message: str, *, after_data: bool = False):
        super().__init__(message)
        self.after_data = after_data


@dataclass
class Reply:
    code: int
    text: str
    stage: str = ""

    def __str__(self) -> str:
        return f"{self.code} {self.text}".strip()


@functools.cache
def local_name() -> str:
    """The EHLO name when ``[submit] helo`` is empty (looked up once, not per connection)."""
    return socket.getfqdn()


def encode_body(raw: bytes) -> bytes:
    """The DATA content without its final ".": CRLF line ends, dot-stuffed, ending in CRLF.

    At C speed: a body without any CR, checked at memchr speed, needs a single replace for its
    line ends; one with CRs (every body the intake stored) one search for a bare LF."""
    data = raw
    if b"\r" not in data:
        data = data.replace(b"\n", b"\r\n")
    elif has_bare_lf(data):  # some bare LF: normalise every line end
        data = data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    if _dot_line(data):
        data = data.replace(b"\r\n.", b"\r\n..")
        if data.startswith(b"."):
            data = b"." + data
    return data


def _dot_line(data: bytes) -> bool:
    """Whether a line of ``data`` (CRLF line ends) may start with ".". Looks at the dots one by
    one (an attachment's base64 has none): a few finds cost less than one 3-byte search
    through the whole body. More dots than one per DOT_LOOK_BYTES (a text) are left to that
    search: True."""
    start = 0
    for _ in range(len(data) // DOT_LOOK_BYTES):
        at = data.find(b".", start)
        if at < 0:
            return False
        if at == 0 or data[at - 1] == 0x0A:
            return True
        start = at + 1
    return True


def encode_data(raw: bytes) -> bytes:
    """CRLF line endings, dot-stuffing, and the terminating "." line."""
    return encode_body(raw) + DOT


class SmtpClient:
    """One SMTP connection (no TLS/AUTH: it talks to the Postfix on the same host)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, timeout: float):
        self.reader = reader
        self.writer = writer
        self.timeout = timeout
        self.pipelining = False
        self.last_used = time.monotonic()
        self.closed = False
        self._received = bytearray()  # read from the server, not yet parsed into replies

    @classmethod
    async def connect(cls, host: str, port: int, *, timeout: float, helo: str = "") -> SmtpClient:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        except (OSError, TimeoutError) as exc:
            raise SmtpConnectionError(f"cannot connect to {host}:{port}: {exc or 'timeout'}") from exc
        client = cls(reader, writer, timeout)
        greeting = await client.read_reply("connect")
        if greeting.code != 220:
            await client.close()
            raise SmtpConnectionError(f"{host}:{port} greeted with {greeting}")
        ehlo = await client.command(f"EHLO {helo or local_name()}", "ehlo")
        if ehlo.code != 250:
            await client.close()
            raise SmtpConnectionError(f"{host}:{port} refused EHLO: {ehlo}")
        client.pipelining = any(line.upper() == "PIPELINING" for line in ehlo.text.split("\n"))
        return client

    def _next_reply(self, stage: str, after_data: bool) -> Reply | None:
        """The first complete reply in the receive buffer (taken out of it), or None."""
        buf = self._received
        lines = []
        start = 0
        while (end := buf.find(b"\n", start)) >= 0:
            text = buf[start:end].decode("utf-8", "replace").rstrip("\r")
            start = end + 1
            if len(text) < 3 or not text[:3].isdigit():
                raise SmtpConnectionError(f"garbled reply at {stage}: {text!r}", after_data=after_data)
            lines.append(text[4:])
            if text[3:4] != "-":
                del buf[:start]
                return Reply(int(text[:3]), "\n".join(lines), stage)
        if len(buf) > REPLY_LIMIT:
            raise SmtpConnectionError(f"garbled reply at {stage}: no line end", after_data=after_data)
        return None

    async def read_reply(self, stage: str, *, after_data: bool = False) -> Reply:
        return (await self.read_replies((stage,), after_data=after_data))[0]

    async def read_replies(self, stages: tuple[str, ...], *, after_data: bool = False) -> list[Reply]:
        """One reply per stage, in order: a pipelined group's replies in one call."""
        replies = []
        try:
            for stage in stages:
                while (reply := self._next_reply(stage, after_data)) is None:
                    # A timeout only around a real wait: replies that came together cost no await.
                    async with asyncio.timeout(self.timeout):
                        data = await self.reader.read(READ_CHUNK)
                    if not data:
                        raise SmtpConnectionError(
                            f"connection closed by server at {stage}", after_data=after_data
                        )
                    self._received += data
                replies.append(reply)
            return replies
        except (OSError, TimeoutError) as exc:
            self.closed = True
            raise SmtpConnectionError(
                f"no reply at {stage}: {exc or 'timeout'}", after_data=after_data
            ) from exc
        except SmtpConnectionError:
            self.closed = True
            raise

    def has_lines(self, count: int) -> bool:
        """Whether ``count`` reply lines are already received (so reading them will not wait)."""
        return self._received.count(b"\n") >= count

    def write(self, data: bytes) -> None:
        """Hand bytes to the transport without waiting: the reply awaited next covers their
        delivery, and a connection lost meanwhile shows there."""
        self.writer.write(data)

    async def _write(self, data: bytes, stage: str, *, after_data: bool = False) -> None:
        try:
            self.writer.write(data)
            if self.writer.transport.get_write_buffer_size() > WRITE_BUFFER_HIGH:
                async with asyncio.timeout(self.timeout):
                    await self.writer.drain()
        except (OSError, TimeoutError) as exc:
            self.closed = True
            raise SmtpConnectionError(
                f"write failed at {stage}: {exc or 'timeout'}", after_data=after_data
            ) from exc

    async def command(self, line: str, stage: str) -> Reply:
        await self._write(line.encode("utf-8") + b"\r\n", stage)
        return await self.read_reply(stage)

    async def send(self, mail_from: str, rcpt: str, raw: bytes) -> Reply:
        """One transaction; returns the deciding reply (first failure or the final one)."""
        return await self.send_encoded(mail_from, rcpt, encode_body(raw))

    @staticmethod
    def envelope(mail_from: str, rcpt: str) -> bytes:
        """MAIL, RCPT and DATA as one pipelined group."""
        return f"MAIL FROM:<{mail_from}>\r\nRCPT TO:<{rcpt}>\r\nDATA\r\n".encode()

    async def envelope_replies(self) -> Reply | None:
        """Replies to a pipelined ``envelope``: None when DATA got 354, else the deciding failure
        (the transaction is cleaned up with RSET before returning)."""
        return await self._check(await self.read_replies(ENVELOPE_STAGES))

    async def _check(self, replies: list[Reply]) -> Reply | None:
        for reply, expected in zip(replies, (2, 2, 3), strict=False):
            if reply.code // 100 != expected:
                if replies[-1].code == 354:
                    # A pipelined DATA was accepted although MAIL/RCPT failed: send an empty body.
                    await self._write(b".\r\n", "data")
                    await self.read_reply("data")
                await self.reset()
                return reply
        return None

    async def send_encoded(self, mail_from: str, rcpt: str, body: bytes) -> Reply:
        """Like ``send`` with the body already passed through ``encode_body``."""
        self.last_used = time.monotonic()
        mail = f"MAIL FROM:<{mail_from}>"
        rcpt_cmd = f"RCPT TO:<{rcpt}>"
        if self.pipelining:
            await self._write(self.envelope(mail_from, rcpt), "mail")
            replies = await self.read_replies(ENVELOPE_STAGES)
        else:
            replies = []
            for line, stage in ((mail, "mail"), (rcpt_cmd, "rcpt"), ("DATA", "data")):
                reply = await self.command(line, stage)
                replies.append(reply)
                if reply.code >= 400:
                    break
        failed = await self._check(replies)
        if failed is not None:
            return failed
        self.write(body)
        await self._write(DOT, "dot", after_data=True)
        final = await self.read_reply("dot", after_data=True)
        self.last_used = time.monotonic()
        return final

    async def reset(self) -> None:
        reply = await self.command("RSET", "rset")
        if reply.code != 250:
            raise SmtpConnectionError(f"RSET refused: {reply}")

    def abort(self) -> None:
        """Drop the connection without QUIT (mid-transaction, a QUIT would be message text)."""
        self.closed = True
        self.writer.transport.abort()

    async def close(self) -> None:
        if not self.closed:
            self.closed = True
            try:
                self.writer.write(b"QUIT\r\n")
                await asyncio.wait_for(self.writer.drain(), 2)
                await asyncio.wait_for(self.reader.readline(), 2)
            except (OSError, TimeoutError):
                pass
        self.writer.close()
        with contextlib.suppress(OSError, TimeoutError):
            await asyncio.wait_for(self.writer.wait_closed(), 2)


Connector = Callable[[], Awaitable[SmtpClient]]


@dataclass
class BatchResult:
    submitted: int = 0
    retried: int = 0
    failed: int = 0
    returned: int = 0
    ambiguous: list[int] = field(default_factory=list)
    connection_error: str = ""


_STAT = {"submitted": "submitted", "retry": "retried", "failed": "failed"}


def _log_result(row: dict, reply: Reply, outcome: str, delay: float) -> None:
    text = str(reply)
    ident = f"message={row['message']} recipient={row['id']} address={row['address']}"
    if outcome == "submitted":
        qid = queue_id_from_reply(text)
        log.info("event=submitted %s qid=%s envelope_from=%s", ident, qid or "-", row["envelope_from"])
    elif outcome == "retry":
        log.warning(
            "event=submit_deferred %s stage=%s retry_in=%.0f reply=%r", ident, reply.stage, delay, text
        )
    else:
        log.error("event=submit_failed %s stage=%s reply=%r", ident, reply.stage, text)


def backoff(attempts: int, *, base: float, maximum: float) -> float:
    """Delay before retry number ``attempts`` (1 = first retry)."""
    return min(base * 2 ** max(attempts - 1, 0), maximum)


class Submitter:
    """Submits released recipients over a pool of reused connections."""

    IDLE_CLOSE = 30.0
    BODY_CACHE = 32  # encoded bodies kept: every recipient of a message shares one
    BODY_CACHE_BYTES = 16 * 1024 * 1024

    def __init__(self, queue: Queue, config: SubmitConfig, *, connector: Connector | None = None):
        self.queue = queue
        self.config = config
        self.connector = connector or self._connect
        self.pool: list[SmtpClient] = []
        self._bodies: OrderedDict[int, bytes] = OrderedDict()
        self._body_bytes = 0
        # Replies read and judged, not yet committed: (row, reply, outcome, retry delay).
        self._results: list[tuple[dict, Reply, str, float]] = []
        self.stats = {"submitted": 0, "retried": 0, "failed": 0, "connection_errors": 0}

    async def _connect(self) -> SmtpClient:
        return await SmtpClient.connect(
            self.config.host, self.config.port, timeout=self.config.timeout, helo=self.config.helo
        )

    async def _checkout(self) -> SmtpClient:
        while self.pool:
            client = self.pool.pop()
            if not client.closed and time.monotonic() - client.last_used < self.IDLE_CLOSE:
                return client
            await client.close()
        return await self.connector()

    async def ready(self) -> bool:
        """Make sure at least one connection works (so nothing is released into a dead server)."""
        try:
            client = await self._checkout()
        except SmtpConnectionError as exc:
            self.stats["connection_errors"] += 1
            log.warning(
                "event=submit_unavailable host=%s port=%s error=%r",
                self.config.host,
                self.config.port,
                str(exc),
            )
            return False
        self.pool.append(client)
        return True

    def _body(self, message_id: int) -> bytes:
        """The message's DATA bytes without the final "." (``encode_body``), cached: every
        recipient shares them. The cache is bounded in bytes too (messages can be large)."""
        body = self._bodies.get(message_id)
        if body is None:
            body = encode_body(self.queue.body(message_id))
            self._bodies[message_id] = body
            self._body_bytes += len(body)
            while len(self._bodies) > 2 and (
                len(self._bodies) > self.BODY_CACHE or self._body_bytes > self.BODY_CACHE_BYTES
            ):
                self._body_bytes -= len(self._bodies.popitem(last=False)[1])
        else:
            self._bodies.move_to_end(message_id)
        return body

    async def submit(self, rows: list[dict], *, stop: asyncio.Event | None = None) -> BatchResult:
        """Submit released rows; when ``stop`` is set, the rows not yet started go back unsent."""
        result = BatchResult()
        pending: asyncio.Queue[dict] = asyncio.Queue()
        for row in rows:
            pending.put_nowait(row)
        stop = stop or asyncio.Event()
        workers = max(1, min(self.config.connections, len(rows)))
        try:
            await asyncio.gather(*(self._worker(pending, result, stop) for _ in range(workers)))
        finally:
            self._commit()
        # Anything left (every connection died, or the service is stopping) was never sent: it
        # goes back to 'queued' and its release is forgotten.
        leftover = []
        while not pending.empty():
            leftover.append(pending.get_nowait()["id"])
        if leftover:
            reason = "not sent: service stopping" if stop.is_set() else f"not sent: {result.connection_error}"
            self.queue.give_back(leftover, reason=reason)
            result.returned += len(leftover)
        return result

    async def _worker(self, pending: asyncio.Queue[dict], result: BatchResult, stop: asyncio.Event) -> None:
        client: SmtpClient | None = None
        reconnects = 0
        try:
            while not pending.empty() and not stop.is_set():
                if client is None or client.closed:
                    try:
                        client = await self._checkout()
                    except SmtpConnectionError as exc:
                        self.stats["connection_errors"] += 1
                        result.connection_error = str(exc)
                        log.warning("event=submit_connect_failed error=%r", str(exc))
                        break
                # Look again after the await: while this worker was connecting, the other
                # workers may have taken every row (or the service began to stop).
                row = self._next(pending, stop)
                if row is None:
                    break
                # Rows taken from `pending` and not finished; the first may have its DATA sent.
                in_hand = [row]
                try:
                    if client.pipelining:
                        await self._stream(client, in_hand, pending, stop, result)
                    else:
                        self._commit()  # this connection's previous result, before its next "."
                        reply = await client.send_encoded(
                            row["envelope_from"], row["address"], self._body(row["message"])
                        )
                        in_hand.clear()
                        self._record(row, reply, result)
                except SmtpConnectionError as exc:
                    self._connection_lost(exc, in_hand, pending, result)
                    await client.close()
                    client = None
                    reconnects += 1
                    if reconnects > 3:
                        break
        except BaseException:
            # Left in the middle of a transaction (the queue failed, or cancelled): no QUIT,
            # which the server would read as message text, and no reuse.
            if client is not None:
                client.abort()
            raise
        if client is not None and not client.closed:
            self.pool.append(client)

    @staticmethod
    def _next(pending: asyncio.Queue[dict], stop: asyncio.Event) -> dict | None:
        return None if stop.is_set() or pending.empty() else pending.get_nowait()

    async def _stream(
        self,
        client: SmtpClient,
        in_hand: list[dict],
        pending: asyncio.Queue[dict],
        stop: asyncio.Event,
        result: BatchResult,
    ) -> None:
        """Transactions back to back on one connection, each message's final "." pipelined with
        the next message's MAIL/RCPT/DATA (RFC 2920): one round trip per message. The order of
        the steps is the module docstring's."""
        row = in_hand[0]
        client.write(client.envelope(row["envelope_from"], row["address"]))
        while in_hand:
            row = in_hand[0]
            client.last_used = time.monotonic()
            failed = await client.envelope_replies()
            if failed is not None:
                in_hand.pop(0)
                self._record(row, failed, result)
                nxt = self._next(pending, stop)
                if nxt is not None:
                    in_hand.append(nxt)
                    client.write(client.envelope(nxt["envelope_from"], nxt["address"]))
                continue
            body = self._body(row["message"])
            if len(body) >= SPLIT_BODY:
                client.write(body)  # the server reads it while the results are committed
                body = b""
            self._commit()
            tail = body + DOT
            nxt = self._next(pending, stop)
            if nxt is not None:
                in_hand.append(nxt)
                tail += client.envelope(nxt["envelope_from"], nxt["address"])
            client.write(tail)
            if nxt is not None:
                self._body(nxt["message"])
            final = await client.read_reply("dot", after_data=True)
            in_hand.pop(0)
            self._record(row, final, result)
            if not client.has_lines(3):
                self._commit()  # the next replies are still on their way: commit while waiting

    def _connection_lost(
        self, exc: SmtpConnectionError, in_hand: list[dict], pending: asyncio.Queue[dict], result: BatchResult
    ) -> None:
        """The first row in hand is ambiguous when its "." was sent; the others go back unsent."""
        self.stats["connection_errors"] += 1
        result.connection_error = str(exc)
        for i, row in enumerate(in_hand):
            if i == 0 and exc.after_data:
                result.ambiguous.append(row["id"])
                log.error(
                    "event=submit_ambiguous message=%s recipient=%s address=%s reason=%r",
                    row["message"],
                    row["id"],
                    row["address"],
                    str(exc),
                )
            else:
                pending.put_nowait(row)
        in_hand.clear()

    def _record(self, row: dict, reply: Reply, result: BatchResult) -> None:
        """Judge a reply; it is committed with the others by the next ``_commit``."""
        delay = 0.0
        if 200 <= reply.code < 300 and reply.stage == "dot":
            outcome = "submitted"
            result.submitted += 1
        elif 400 <= reply.code < 500 or reply.code < 200:
            outcome = "retry"
            delay = backoff(row["attempts"] + 1, base=self.config.retry_base, maximum=self.config.retry_max)
            result.retried += 1
        else:
            outcome = "failed"
            result.failed += 1
        self.stats[_STAT[outcome]] += 1
        self._results.append((row, reply, outcome, delay))

    def _commit(self) -> None:
        """Write every result read so far in one transaction, then log them. Called before any
        connection sends a final ".", so each connection has at most one message whose "." went
        out while its result was not yet committed."""
        if not self._results:
            return
        results, self._results = self._results, []
        try:
            self.queue.record_submissions(
                [(row["id"], outcome, str(reply), delay) for row, reply, outcome, delay in results]
            )
        finally:
            for row, reply, outcome, delay in results:
                _log_result(row, reply, outcome, delay)

    async def close_idle(self) -> int:
        """QUIT pooled connections unused for IDLE_CLOSE seconds (between batches); returns how many."""
        keep, idle = [], []
        for client in self.pool:
            (
                idle if client.closed or time.monotonic() - client.last_used >= self.IDLE_CLOSE else keep
            ).append(client)
        self.pool = keep
        for client in idle:
            await client.close()
        return len(idle)

    async def close(self) -> None:
        """Close every pooled connection (QUIT)."""
        while self.pool:
            await self.pool.pop().close()
