"""One DNS question with a per-query time budget and retries, over dnspython asyncio.

The transport (how a message reaches a nameserver) is injected, so tests can answer from a
table and production uses UDP with TCP fallback. Only NXDOMAIN is a definite "no"; SERVFAIL,
REFUSED, timeouts and network errors are reported as errors ("could not tell").
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import dns.asyncquery
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.resolver

from bulkrelay.dnsbl.names import InputError, Nameserver, parse_nameserver

Transport = Callable[[dns.message.Message, Nameserver, float], Awaitable[dns.message.Message]]


async def udp_transport(
    query: dns.message.Message, server: Nameserver, timeout: float
) -> dns.message.Message:
    response, _tcp = await dns.asyncquery.udp_with_fallback(
        query, server.address, timeout=timeout, port=server.port
    )
    return response


def system_nameservers() -> tuple[Nameserver, ...]:
    """The resolvers of /etc/resolv.conf, used when none are configured."""
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
        timeout: float = 4.0,
        retries: int = 1,
        transport: Transport = udp_transport,
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
