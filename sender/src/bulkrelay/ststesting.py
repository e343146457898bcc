"""MTA-STS ``mode: testing`` is logged only (RFC 8461 5: not enforced, but reported).

Postfix asks the MTA-STS daemon's zone ``postfix`` (roles/relay_mta_sts), which answers
NOTFOUND for a testing policy, so the domain gets Postfix's global level. The daemon's second
zone ``testing`` treats testing policies as enforce. For a delivery tracking saw without
verified TLS, this asks both zones for the recipient domain: when only ``testing`` has a policy,
the mail went out where an enforced policy would have deferred it, and one warning says so.

Lookups run on one background thread, never in tracking's path: a slow or dead daemon costs a
debug line, never a delayed or lost result. Each domain is asked at most once per ``every``
seconds, so a mailing to one testing domain gives one warning per interval, not one per
recipient (each delivery's own line already carries its tls= level).
"""

from __future__ import annotations

import logging
import queue
import socket
import threading
import time
from collections.abc import Callable

log = logging.getLogger("bulkrelay.tracking")

ENFORCED_ZONE = "postfix"  # the zone in relay_postfix's smtp_tls_policy_maps (relay_mta_sts__postfix_map)
TESTING_ZONE = "testing"  # strict_testing: true (roles/relay_mta_sts, mta-sts-daemon.yml)
TIMEOUT = 5.0  # seconds per lookup: the daemon fetches an unknown policy over DNS and HTTPS (4 s)
EVERY = 3600.0  # seconds between two lookups (and warnings) for one domain
PENDING = 100  # domains waiting for a lookup; more are dropped until the thread catches up
ASKED_KEPT = 10000  # domains remembered before the ones asked over `every` ago are forgotten


def _netstring(data: bytes) -> bytes:
    return b"%d:%s," % (len(data), data)


def socketmap_query(address: str, zone: str, key: str, *, timeout: float = TIMEOUT) -> str:
    """The answer of the socketmap at ``address`` ("host:port") for ``zone key``: "OK ...",
    "NOTFOUND ", ...; raises OSError (TimeoutError included) or ValueError (not a netstring)."""
    host, _, port = address.rpartition(":")
    with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout) as sock:
        sock.settimeout(timeout)
        sock.sendall(_netstring(f"{zone} {key}".encode("ascii")))
        reply = b""
        while True:
            length, colon, rest = reply.partition(b":")
            if colon and len(rest) > int(length):  # the whole "N:data," is here
                return rest[: int(length)].decode("ascii", "replace")
            chunk = sock.recv(4096)
            if not chunk:
                raise ValueError(f"socketmap closed after {reply[:60]!r}")
            reply += chunk


class StsTestingLog:
    """Warns when a delivery without verified TLS went to a domain whose MTA-STS policy is testing."""

    def __init__(
        self,
        address: str,
        *,
        timeout: float = TIMEOUT,
        every: float = EVERY,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.address = address
        self.timeout = timeout
        self.every = every
        self.clock = clock
        self.asked: dict[str, float] = {}  # domain -> when it was last looked up
        self.pending: queue.Queue[tuple[str, str, str]] = queue.Queue(PENDING)
        threading.Thread(target=self._run, name="mta-sts-testing", daemon=True).start()

    def note(self, recipient: str, relay: str, tls: str) -> None:
        """A delivery of ``recipient`` via ``relay`` with TLS level ``tls``; returns at once."""
        domain = recipient.rpartition("@")[2].lower()
        if tls == "verified" or not domain:
            return
        now = self.clock()
        if now - self.asked.get(domain, -self.every) < self.every:
            return
        if len(self.asked) >= ASKED_KEPT:  # an entry older than `every` is as good as none
            self.asked = {d: t for d, t in self.asked.items() if now - t < self.every}
        self.asked[domain] = now
        try:
            self.pending.put_nowait((domain, relay, tls))
        except queue.Full:
            log.debug("event=mta_sts_testing_skipped domain=%s reason=lookups-pending", domain)

    def _run(self) -> None:
        while True:
            item = self.pending.get()
            try:
                self._check(*item)
            finally:
                self.pending.task_done()

    def _check(self, domain: str, relay: str, tls: str) -> None:
        try:
            testing = socketmap_query(self.address, TESTING_ZONE, domain, timeout=self.timeout)
            if not testing.startswith("OK "):
                return
            enforced = socketmap_query(self.address, ENFORCED_ZONE, domain, timeout=self.timeout)
        except (OSError, ValueError) as exc:
            log.debug(
                "event=mta_sts_testing_unknown domain=%s map=%s error=%r", domain, self.address, str(exc)
            )
            return
        if enforced.startswith("OK "):
            return  # enforce: Postfix had the policy (a per-domain override may have lowered it)
        match = next((w[6:] for w in testing.split() if w.startswith("match=")), "")
        log.warning(
            "event=mta_sts_testing domain=%s policy_mx=%s relay=%s tls=%s: MTA-STS testing policy, "
            "delivered without verified TLS; under mode: enforce it would have been deferred",
            domain,
            match,
            relay or "-",
            tls,
        )
