"""One DNS question with a per-query time budget and retries, over dnspython asyncio.

The transport (how a message reaches a nameserver) is injected, so tests can answer from a
table and production uses a `UdpPool`: one UDP socket per nameserver for every question of a
check, with TCP fallback. Only NXDOMAIN is a definite "no"; SERVFAIL, REFUSED, timeouts and
network errors are reported as errors ("could not tell").
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import dns.entropy
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype

from bulkrelay.dnsbl.names import InputError, Nameserver, parse_nameserver

Transport = Callable[[dns.message.Message, Nameserver, float], Awaitable[dns.message.Message]]


class UdpPool:
    """A Transport that asks every question of one check over one UDP socket per nameserver.

    dnspython's own asyncio query opens (and closes) a socket and an event-loop endpoint for
    each question, which was a third of a 40-list check's CPU (docs/benchmarks.md). Answers
    are matched to their question by message id and question section (`is_response`); the ids
    of the questions waiting on one socket are kept distinct. A truncated answer is asked
    again over TCP. Use it within one event loop, then `close()` it.
    """

    def __init__(self) -> None:
        self._sockets: dict[Nameserver, asyncio.Future[_Socket]] = {}

    async def __call__(
        self, query: dns.message.Message, server: Nameserver, timeout: float
    ) -> dns.message.Message:
        opening = self._sockets.get(server)
        if opening is None:
            opening = self._sockets[server] = asyncio.ensure_future(_Socket.open(server))
        sock = await asyncio.shield(opening)  # one waiter's deadline must not close it for all
        response = await sock.ask(query)
        if response is None:  # truncated: the whole answer over TCP
            # imported when needed: dns.asyncquery (~6 ms) is a rare fallback in a Nagios plugin's start-up
            import dns.asyncquery  # noqa: PLC0415

            return await dns.asyncquery.tcp(query, server.address, timeout=timeout, port=server.port)
        return response

    def close(self) -> None:
        for opening in self._sockets.values():
            if opening.done() and not opening.cancelled() and opening.exception() is None:
                opening.result().close()
            else:
                opening.cancel()
        self._sockets.clear()


class _Socket(asyncio.DatagramProtocol):
    """One connected UDP socket: only its nameserver's datagrams reach it."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.waiting: dict[int, tuple[dns.message.Message, asyncio.Future[dns.message.Message | None]]] = {}

    @classmethod
    async def open(cls, server: Nameserver) -> _Socket:
        loop = asyncio.get_running_loop()
        _transport, protocol = await loop.create_datagram_endpoint(
            cls, remote_addr=(server.address, server.port)
        )
        return protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    async def ask(self, query: dns.message.Message) -> dns.message.Message | None:
        """The answer, or None when it came truncated."""
        while query.id in self.waiting:
            query.id = dns.entropy.random_16()
        answer: asyncio.Future[dns.message.Message | None] = asyncio.get_running_loop().create_future()
        self.waiting[query.id] = (query, answer)
        try:
            assert self.transport is not None
            self.transport.sendto(query.to_wire())
            return await answer
        finally:
            del self.waiting[query.id]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        waiting = self.waiting.get(int.from_bytes(data[:2], "big")) if len(data) >= 2 else None
        if waiting is None or waiting[1].done():
            return  # the late answer of a question given up, or noise
        query, answer = waiting
        try:
            response = dns.message.from_wire(data, raise_on_truncation=True)
        except dns.message.Truncated:
            answer.set_result(None)
            return
        except dns.exception.DNSException:
            return  # not a DNS message: keep waiting for the real answer
        if query.is_response(response):
            answer.set_result(response)

    def error_received(self, exc: Exception) -> None:
        # An ICMP error (port unreachable...) names no question: every waiting one gets it.
        for _query, answer in self.waiting.values():
            if not answer.done():
                answer.set_exception(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.error_received(exc or ConnectionError("socket closed"))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def system_nameservers() -> tuple[Nameserver, ...]:
    """The resolvers of /etc/resolv.conf, used when none are configured."""
    import dns.resolver  # noqa: PLC0415 - ~9 ms, needed only without configured nameservers

    try:
        resolver = dns.resolver.Resolver(configure=True)
    except dns.resolver.NoResolverConfiguration:
        raise InputError(
            "no nameserver configured and /etc/resolv.conf names none: give nameservers (e.g. -s 127.0.0.1)"
        ) from None
    return tuple(parse_nameserver(str(ns)) for ns in resolver.nameservers)


@dataclass(frozen=True)
class Answer:
    """The outcome of one question: "found" (values set), "nxdomain", "nodata" or "error"."""

    status: str
    values: tuple[str, ...] = ()
    error: str = ""


class Lookup:
    """Asks `nameservers` in turn: `retries + 1` tries sharing one `timeout` (seconds) per query."""

    def __init__(
        self,
        nameservers: Sequence[Nameserver],
        transport: Transport,
        timeout: float = 4.0,
        retries: int = 1,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if not nameservers:
            raise InputError("no nameserver to ask")
        self.nameservers = tuple(nameservers)
        self.timeout = timeout
        self.retries = retries
        self.transport = transport
        self.monotonic = monotonic

    async def query(self, name: str, rdtype: str = "A") -> Answer:
        if not name.endswith("."):
            raise InputError(f"query name {name!r} is not absolute")
        qname = dns.name.from_text(name)
        wanted = dns.rdatatype.from_text(rdtype)
        tries = self.retries + 1
        deadline = self.monotonic() + self.timeout
        last_error = "no answer"
        for attempt in range(tries):
            remaining = deadline - self.monotonic()
            if remaining <= 0:
                break
            per_try = min(remaining, self.timeout / tries)
            server = self.nameservers[attempt % len(self.nameservers)]
            query = dns.message.make_query(qname, wanted)
            query.flags |= dns.flags.RD
            try:
                response = await asyncio.wait_for(self.transport(query, server, per_try), per_try)
            except (TimeoutError, dns.exception.Timeout):
                last_error = f"timeout after {self.timeout:g}s ({tries} tries) asking {server}"
                continue
            except OSError as exc:
                last_error = f"network error asking {server}: {exc.strerror or exc}"
                await asyncio.sleep(min(per_try, 0.05))
                continue
            except dns.exception.DNSException as exc:
                last_error = f"bad response from {server}: {exc}"
                continue
            rcode = response.rcode()
            if rcode == dns.rcode.NXDOMAIN:
                return Answer("nxdomain")
            if rcode != dns.rcode.NOERROR:
                last_error = f"{dns.rcode.to_text(rcode)} from {server}"
                continue
            values: list[str] = []
            for rrset in response.answer:
                if rrset.rdtype == wanted:
                    values.extend(_rdata_text(rd) for rd in rrset)
            if values:
                return Answer("found", tuple(sorted(set(values))))
            return Answer("nodata", error=f"no {rdtype} record (NODATA) from {server}")
        return Answer("error", error=last_error)


def _rdata_text(rdata: object) -> str:
    strings = getattr(rdata, "strings", None)
    if strings is not None:
        return "".join(s.decode("utf-8", "replace") for s in strings)
    return str(rdata)
