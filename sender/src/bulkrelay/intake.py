"""SMTP intake for application servers: durable before acknowledged.

A client outside ``[intake] allowed_networks`` gets ``554`` at connect and nothing else. For a
client inside, every message is validated (:func:`bulkrelay.message.validate`) and then written
to the queue; the ``250`` reply is sent only after :meth:`Queue.enqueue` returned, i.e. after the
COMMIT. When the queue cannot commit (``QueueUnavailable``: disk full, database locked longer
than its busy timeout) or anything unexpected fails, the reply is ``451`` so the client keeps the
message and retries - never ``250`` for a message that is not on disk.

Queue writes run in one thread with its own database connection (:class:`GroupCommitter`), so a
locked database never stalls the event loop that also runs the release loop. The messages that
arrive while one COMMIT is syncing are committed together in the next transaction: concurrent
sessions share one fsync, and each session still answers only after its own COMMIT.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import email.utils
import functools
import hashlib
import hmac
import ipaddress
import logging
import os
import queue
import re
import socket
import ssl
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

from bulkrelay.message import BadMessage, address_problem, line_over
from bulkrelay.normalise import accept
from bulkrelay.queue import Checkpointer, Queue, Submission

log = logging.getLogger("bulkrelay.intake")

MAX_RECIPIENTS = 1000
IDENT = "bulkrelay intake"

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
EnqueueFn = Callable[[bytes, str, list[str], str], Awaitable[int]]


def _kv(event: str, **fields: Any) -> str:
    parts = [f"event={event}"]
    for key, value in fields.items():
        text = str(value)
        if not text or any(c in text for c in ' "=\n'):
            text = '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
        parts.append(f"{key}={text}")
    return " ".join(parts)


def parse_networks(networks: Sequence[str]) -> list[Network]:
    return [ipaddress.ip_network(n, strict=False) for n in networks]


def peer_allowed(peer: Any, networks: Sequence[Network]) -> bool:
    """True when the peer address (``session.peer``: (host, port, ...)) is inside a network."""
    if not peer:
        return False
    host = peer[0] if isinstance(peer, tuple) else str(peer)
    try:
        addr = ipaddress.ip_address(str(host).split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return any(addr.version == net.version and addr in net for net in networks)


def split_listen(value: str) -> tuple[str, int]:
    """ "IP:port" or "[v6]:port" -> (host, port)."""
    host, _, port = value.rpartition(":")
    return host.strip("[]"), int(port)


# --- AUTH: a small password file ----------------------------------------------------------------
# One line per user: ``user:pbkdf2_sha256$ITERATIONS$SALT_B64$HASH_B64``; blank lines and lines
# starting with # are ignored. ``hash_password`` writes the second field.

_PBKDF2_ITERATIONS = 200_000


def hash_password(password: str, *, iterations: int = _PBKDF2_ITERATIONS, salt: bytes | None = None) -> str:
    salt = salt if salt is not None else os.urandom(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    b64 = base64.b64encode
    return f"pbkdf2_sha256${iterations}${b64(salt).decode()}${b64(digest).decode()}"


def verify_password(password: bytes, stored: str) -> bool:
    try:
        scheme, iterations, salt, digest = stored.split("$")
        if scheme != "pbkdf2_sha256":
            return False
        got = hashlib.pbkdf2_hmac("sha256", password, base64.b64decode(salt), int(iterations))
        return hmac.compare_digest(got, base64.b64decode(digest))
    except (ValueError, TypeError):
        return False


def load_auth_file(path: str) -> dict[str, str]:
    """Users and password hashes; raises ValueError naming the line that is wrong."""
    users: dict[str, str] = {}
    for lineno, text in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        line = text.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, stored = line.partition(":")
        if not sep or not user or not stored.startswith("pbkdf2_sha256$") or stored.count("$") != 3:
            raise ValueError(
                f"{path} line {lineno}: expected user:pbkdf2_sha256$..., "
                "create the hash with `bulkrelay intake-password USER`"
            )
        users[user] = stored
    return users


class PasswordAuthenticator:
    """aiosmtpd ``authenticator``: PLAIN/LOGIN against the password file."""

    def __init__(self, users: dict[str, str]) -> None:
        self.users = users

    def __call__(
        self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
    ) -> AuthResult:
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        user = auth_data.login.decode("utf-8", "replace")
        stored = self.users.get(user)
        ok = stored is not None and verify_password(auth_data.password, stored)
        log.info(_kv("intake.auth", user=user, mechanism=mechanism, ok=ok, peer=_peer_ip(session)))
        return AuthResult(success=ok, handled=False, auth_data=user if ok else None)


# --- the SMTP side -----------------------------------------------------------------------------


def _peer_ip(session: Any) -> str:
    peer = getattr(session, "peer", None)
    return str(peer[0]) if isinstance(peer, tuple) and peer else str(peer)


_ATEXT = r"[A-Za-z0-9!#$%&'*+/=^_`{|}~-]+"  # RFC 5322 atext without "?": no "=?" encoded word
_PLAIN_PATH = re.compile(rf"<({_ATEXT}(?:\.{_ATEXT})*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)>")
_NOT_HELO_TEXT = re.compile(r"[^!-~]+")  # Received: keeps the EHLO name's printable ASCII, not space


class IntakeSMTP(SMTP):
    """aiosmtpd's SMTP with the allow-list applied before the greeting (554, then close)."""

    # RFC 5321 allows 1000 octets a line; ERP exports send whole HTML invoices on one line.
    # Take lines up to 64 KiB and let bulkrelay.normalise re-encode them (longer: 500).
    line_length_limit = 64 * 1024

    def __init__(self, handler: IntakeHandler, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._intake = handler

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """aiosmtpd's address parsing, with a fast path for a plain ``<local@domain>``.

        aiosmtpd parses every MAIL and RCPT address with the email package's header parser
        (and defines a class on each call): a fifth of the intake's time per 5 KB message.
        The fast path returns what that parser returns for a dot-atom local part and a domain
        of letters, digits and hyphens, followed by nothing or by parameters; anything else
        (``<>``, quoted local parts, source routes, literals, comments, 8-bit) is parsed by it.
        """
        match = _PLAIN_PATH.match(arg)
        if match is None:
            return super()._getaddr(arg)
        rest = arg[match.end() :]
        if rest[:1] in (" ", "\t"):  # the parser drops the white space after ">"...
            rest = rest.lstrip()
        if rest[:1] == "(":  # ...and a comment there
            return super()._getaddr(arg)
        address = match.group(1)
        if self.local_part_limit and len(address.rpartition("@")[0]) > self.local_part_limit:
            return None, None
        return address, rest

    async def _handle_client(self) -> None:
        session = self.session
        if session is not None and not peer_allowed(session.peer, self._intake.networks):
            log.warning(_kv("intake.refused", peer=_peer_ip(session), reason="not in allowed_networks"))
            await self.push("554 5.7.1 This relay does not accept mail from your address")
            # RFC 5321 3.1: after a 554 greeting, answer QUIT; we close after one reply either way.
            try:
                line = await asyncio.wait_for(self._reader.readline(), timeout=10)
            except (TimeoutError, ConnectionError, asyncio.IncompleteReadError):
                line = b""
            if line.strip().upper().startswith(b"QUIT"):
                await self.push("221 2.0.0 Bye")
            elif line:
                await self.push("503 5.7.1 No service for your address")
            if self.transport is not None:
                self.transport.close()
            return
        await super()._handle_client()

    async def smtp_DATA(self, arg: str) -> None:
        """aiosmtpd's DATA, reading the content in large pieces instead of line by line.

        aiosmtpd builds one bytearray per line in Python: for a 200 KB invoice (2,700 base64
        lines) that was the intake's largest cost (see docs/benchmarks.md). The rules are
        aiosmtpd's: only CRLF "." CRLF ends the data (a bare LF or CR around the dot does not:
        SMTP smuggling), a leading dot is removed from each line (here from a line after a bare
        LF too, as Postfix does), and a message over ``data_size_limit`` (552) or with a line
        over ``line_length_limit`` (500) is read to its end, discarded and refused.
        """
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None and self.session is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        try:
            data = await read_data(self._reader, self.data_size_limit, self.line_length_limit)
        except (asyncio.CancelledError, asyncio.IncompleteReadError) as exc:
            log.info(_kv("intake.lost", peer=_peer_ip(self.session), during="DATA"))
            self._writer.close()
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        if isinstance(data, str):  # the refusal, once the client has sent everything
            await self.push(data)
            self._set_post_data_state()
            return
        self.envelope.content = self.envelope.original_content = data
        status = await self._intake.handle_DATA(self, self.session, self.envelope)
        self._set_post_data_state()
        await self.push(status)


LINE_DOT = b"\n."  # a dot that begins a line (after CRLF or a bare LF): stuffed, or the end


async def read_data(reader: asyncio.StreamReader, size_limit: int | None, line_limit: int) -> bytes | str:
    """The content of DATA up to CRLF "." CRLF, dot-unstuffed; or the refusal (552, 500) when
    it is over ``size_limit`` bytes or has a line over ``line_limit`` (read to its end anyway).

    One search at C speed (``readuntil``) for LF "." finds both the end and the dot-stuffed
    lines. A dot after CRLF ends the data when the next two bytes, read exactly, are CRLF.
    Every other dot that begins a line, after CRLF or after a bare LF, was stuffed and is left
    out, as Postfix's smtpd does: clients that send bare LF (smtplib with bytes) stuff after
    every LF. So a lone "." next to a bare LF (LF "." CRLF, CRLF "." LF, LF "." LF: SMTP
    smuggling) ends nothing and becomes an empty line, where Postfix's
    ``smtpd_forbid_bare_newline = normalize`` drops that line: neither is content a client
    means (one that stuffs sends ".."), and one rule for every line keeps everything else the
    client sent. A line can begin in bytes already read only at the start (the CRLF of
    ``DATA`` itself) or after bytes read exactly or cut at the buffer limit; there the next
    byte is read exactly. The content is joined once, with each dropped dot sliced off its
    piece (no copy before the join). A line ends at LF for ``line_limit``, as for the stuffing
    and as in Postfix's smtpd: a 200 KB invoice of bare-LF lines is lines, not one line.
    """
    pieces: list[bytes] = []  # as received, the last byte of each in ``dotted`` being a line dot
    dotted: list[int] = []
    received = 0
    tail = b"\r\n"  # the last bytes received, up to 3: the data starts at the start of a line
    while True:
        if tail == b"\r\n.":  # the end if CRLF follows; else the dot was stuffed
            piece = await reader.readexactly(2)
            if piece == b"\r\n":
                received += 2
                break
        elif tail.endswith(b"\n"):  # a line begins with the next byte
            piece = await reader.readexactly(1)
        else:
            try:
                piece = await reader.readuntil(LINE_DOT)
            except asyncio.LimitOverrunError as exc:  # no line dot within the buffer: take what is safe
                piece = await reader.readexactly(exc.consumed)
        received += len(piece)
        tail = (tail + piece[-3:])[-3:]
        if not size_limit or received <= size_limit + 3:  # the data as sent may be within the limit
            if tail.endswith(LINE_DOT):
                dotted.append(len(pieces))
            pieces.append(piece)
        elif pieces:
            pieces.clear()  # over the limit: keep reading, keep nothing
            dotted.clear()
    if size_limit and received - 3 > size_limit:
        return "552 Error: Too much mail data"
    return _content(pieces, dotted, line_limit)


def _content(pieces: list[bytes], dotted: list[int], line_limit: int) -> bytes | str:
    """The pieces joined once without the dots at their ends listed in ``dotted`` (the last
    piece ends with the final dot), or the 500 refusal when a line is over ``line_limit``."""
    kept: list[bytes | memoryview] = list(pieces)
    for index in dotted:
        kept[index] = memoryview(pieces[index])[:-1]
    data = b"".join(kept)
    # The limit counts a line as sent: up to and with its LF (CR LF or a bare LF), and with its
    # stuffed dot. A line of the data is shorter by at most that dot, so the data as sent is
    # measured only when one may be over.
    if line_over(data, line_limit - 2, b"\n"):
        wire = b"".join([*pieces[:-1], memoryview(pieces[-1])[:-1]])
        if line_over(wire, line_limit - 1, b"\n"):
            return "500 Line too long (see RFC5321 4.5.3.1.6)"
    return data


@functools.lru_cache(maxsize=1)
def _smtp_date(second: int) -> str:
    """RFC 5322 date of a whole second: formatted once a second, not once a message."""
    return email.utils.formatdate(second, usegmt=True)


@dataclass
class IntakeStats:
    accepted: int = 0
    rejected: int = 0
    deferred: int = 0


class IntakeHandler:
    """aiosmtpd handler: validates, then awaits ``enqueue`` (the COMMIT) before its reply."""

    def __init__(
        self,
        enqueue: EnqueueFn,
        *,
        networks: Sequence[Network],
        max_size: int,
        hostname: str = "localhost",
        clock: Callable[[], float] = time.time,
        from_domains: Sequence[str] = (),
    ) -> None:
        self.enqueue = enqueue
        self.from_domains = tuple(from_domains)
        self.networks = list(networks)
        self.max_size = max_size
        self.hostname = hostname
        self.clock = clock
        self.stats = IntakeStats()

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        problem = address_problem(address) if address else None
        if problem:
            return f"553 5.1.7 sender address {address!r} {problem}"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        problem = address_problem(address)
        if problem:
            return f"553 5.1.3 recipient address {address!r} {problem}"
        if len(envelope.rcpt_tos) >= MAX_RECIPIENTS:
            return f"452 4.5.3 Too many recipients; send the rest in another message (max {MAX_RECIPIENTS})"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 OK"

    def received_header(self, session: Any, protocol: str) -> bytes:
        helo = _NOT_HELO_TEXT.sub("", str(session.host_name or ""))[:64] or "unknown"
        date = _smtp_date(int(self.clock()))
        return (
            f"Received: from {helo} ([{_peer_ip(session)}])\r\n\tby {self.hostname} ({IDENT}) "
            f"with {protocol};\r\n\t{date}\r\n"
        ).encode("ascii")

    async def handle_DATA(self, server, session, envelope):
        raw = envelope.original_content or b""
        peer = _peer_ip(session)
        mail_from = envelope.mail_from or ""
        rcpts = list(envelope.rcpt_tos)
        protocol = "ESMTP" + ("S" if session.ssl else "") + ("A" if session.authenticated else "")
        try:
            accepted = accept(
                raw,
                max_size=self.max_size,
                mail_from=mail_from,
                recipients=rcpts,
                trace=self.received_header(session, protocol),
                from_domains=self.from_domains,
            )
        except BadMessage as exc:
            self.stats.rejected += 1
            log.warning(_kv("intake.rejected", peer=peer, mail_from=mail_from, reason=exc.reason))
            return exc.smtp_reply()
        try:
            message_id = await self.enqueue(accepted.raw, mail_from, rcpts, f"smtp:{peer}")
        except Exception as exc:  # QueueUnavailable and anything unexpected: never 250
            self.stats.deferred += 1
            log.error(
                _kv("intake.deferred", peer=peer, mail_from=mail_from, error=type(exc).__name__, reason=exc)
            )
            return "451 4.3.0 Queue unavailable, message not accepted; try again later"
        self.stats.accepted += 1
        log.info(
            _kv(
                "intake.accepted",
                peer=peer,
                message=message_id,
                mail_from=mail_from,
                rcpts=len(rcpts),
                size=len(raw),
            )
        )
        if accepted.repairs:
            log.info(
                _kv("intake.repaired", peer=peer, message=message_id, changes="; ".join(accepted.repairs))
            )
        return f"250 2.0.0 Ok: queued as {message_id}"


def tls_context(cert: str, key: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    return context


class GroupCommitter:
    """One thread with its own queue connection that commits the intake's messages in groups.

    ``enqueue`` hands a message to the thread and waits for the COMMIT of the transaction that
    stored it. The thread takes everything that is waiting (up to ``max_group``) into one
    transaction (``Queue.enqueue_group``): the sessions that sent while the previous COMMIT
    was syncing share the next one's fsync. A failed COMMIT fails every message of its group
    (each session answers 451) and stores none of them.

    WAL checkpoints (copying committed pages into the database file, 10-20 ms for a few MB)
    run in a ``Checkpointer`` thread with its own connection, at most every ``checkpoint_every``
    seconds after a COMMIT, instead of inside every ~20th COMMIT of a 200 KB invoice.
    """

    def __init__(
        self, open_queue: Callable[[], Any], *, max_group: int = 64, checkpoint_every: float = 0.05
    ) -> None:
        self._open_queue = open_queue
        self._max_group = max_group
        self._waiting: queue.SimpleQueue = queue.SimpleQueue()
        self._checkpointer = Checkpointer(open_queue, every=checkpoint_every, name="intake-checkpoint")
        self._thread = threading.Thread(target=self._run, name="intake-commit", daemon=True)
        self._thread.start()

    @property
    def waiting(self) -> int:
        """Messages handed over and not yet taken into a transaction."""
        return self._waiting.qsize()

    async def enqueue(self, raw: bytes, mail_from: str, recipients: list[str], source: str) -> int:
        loop = asyncio.get_running_loop()
        committed = loop.create_future()
        self._waiting.put((Submission(raw, mail_from, recipients, source), loop, committed))
        return await committed

    def _run(self) -> None:
        store = None
        while True:
            group = [self._waiting.get()]
            while group[-1] is not None and len(group) < self._max_group:
                try:
                    group.append(self._waiting.get_nowait())
                except queue.Empty:
                    break
            stop = group[-1] is None
            group = [item for item in group if item is not None]
            if group:
                try:
                    if store is None:
                        store = self._open_queue()
                        store.checkpoint_elsewhere(self._checkpointer)
                    results: list[Any] = store.enqueue_group([submission for submission, _, _ in group])
                except Exception as exc:  # QueueUnavailable and anything unexpected: all of them
                    results = [exc] * len(group)
                for (_, loop, committed), result in zip(group, results, strict=True):
                    with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits
                        loop.call_soon_threadsafe(_settle, committed, result)
            if stop:
                break
        if store is not None:
            store.close()

    def close(self) -> None:
        """Commit what is waiting, then close the connections and end the threads."""
        self._waiting.put(None)
        self._thread.join()
        self._checkpointer.close()


def _settle(committed: asyncio.Future, result: Any) -> None:
    if committed.done():  # the session is gone (connection lost); its message is stored anyway
        return
    if isinstance(result, BaseException):
        committed.set_exception(result)
    else:
        committed.set_result(result)


async def start_intake(
    config: Any,
    enqueue: EnqueueFn,
    *,
    hostname: str | None = None,
    clock: Callable[[], float] = time.time,
) -> list[asyncio.AbstractServer]:
    """Start one listener per ``[intake] listen`` entry; returns the servers (close them to stop)."""
    intake = config.intake
    handler = IntakeHandler(
        enqueue,
        networks=parse_networks(intake.allowed_networks),
        max_size=intake.max_message_size,
        hostname=hostname or _hostname(),
        clock=clock,
        from_domains=intake.from_domains,
    )
    context = tls_context(intake.tls_cert, intake.tls_key) if intake.tls_cert else None
    authenticator = PasswordAuthenticator(load_auth_file(intake.auth_file)) if intake.auth_file else None

    def factory() -> IntakeSMTP:
        return IntakeSMTP(
            handler,
            hostname=handler.hostname,
            ident=IDENT,
            data_size_limit=intake.max_message_size,
            tls_context=context,
            authenticator=authenticator,
            auth_required=authenticator is not None,
            auth_require_tls=True,
            timeout=300,
        )

    loop = asyncio.get_running_loop()
    servers = []
    for listen in intake.listen:
        host, port = split_listen(listen)
        servers.append(await loop.create_server(factory, host=host, port=port))
        log.info(
            _kv(
                "intake.listening",
                listen=listen,
                networks=",".join(intake.allowed_networks) or "none",
                tls=context is not None,
                auth=authenticator is not None,
            )
        )
    return servers


def _hostname() -> str:
    return socket.getfqdn()


async def serve_intake(config: Any, queue: Any = None) -> None:
    """Run the SMTP intake until cancelled (called by ``bulkrelay serve``).

    Writes go through a :class:`GroupCommitter` with its own ``Queue(config.queue.path)``
    connection; ``queue`` (the service's own Queue) is not used from another thread.
    """
    if not config.intake.listen:
        return
    committer = GroupCommitter(lambda: Queue(config.queue.path))
    servers: list[asyncio.AbstractServer] = []
    try:
        servers = await start_intake(config, committer.enqueue)
        await asyncio.Event().wait()
    finally:
        for server in servers:
            server.close()
        for server in servers:
            await server.wait_closed()
        await asyncio.get_running_loop().run_in_executor(None, committer.close)
