"""MTA-STS `mode: testing` is logged only: tracking asks the MTA-STS daemon's strict zone about
each domain it delivered to without verified TLS, and warns when only that zone has a policy.

The daemon here is a real TCP socketmap server on loopback speaking Postfix's socketmap protocol
(netstrings "zone domain" -> "OK secure match=..." / "NOTFOUND "), answering per zone and domain
as postfix-mta-sts-resolver 1.1.2's responder does (zone "postfix": strict_testing false,
zone "testing": strict_testing true).
"""

import logging
import socketserver
import threading
import time

import pytest
from conftest import submitted
from support import free_port

from bulkrelay import ststesting, tracking
from bulkrelay.config import ConfigError, parse
from bulkrelay.ststesting import StsTestingLog, socketmap_query

HOST = "2026-11-30T10:00:00.000001+00:00 relay postfix"
SECURE = "OK secure match=mx.testing.test servername=hostname"
# domain -> mode of its published policy
POLICIES = {"testing.test": "testing", "enforce.test": "enforce", "slow.test": "testing"}


def answer(zone: str, domain: str) -> str:
    mode = POLICIES.get(domain)
    if mode == "enforce" or (mode == "testing" and zone == "testing"):
        return SECURE.replace("testing.test", domain)
    return "NOTFOUND "


class Daemon(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, port: int, delay: float = 0.0):
        self.asked: list[str] = []
        self.delay = delay
        super().__init__(("127.0.0.1", port), Handler)


class Handler(socketserver.StreamRequestHandler):
    def handle(self):
        while True:  # one netstring request after another on the same connection
            length = b""
            while (c := self.rfile.read(1)) not in (b":", b""):
                length += c
            if not length:
                return
            request = self.rfile.read(int(length)).decode()
            self.rfile.read(1)  # ","
            self.server.asked.append(request)
            zone, _, domain = request.partition(" ")
            if domain == "slow.test":
                time.sleep(self.server.delay)
            reply = answer(zone, domain).encode()
            self.wfile.write(b"%d:%s," % (len(reply), reply))


@pytest.fixture
def daemon():
    servers = []

    def start(delay: float = 0.0) -> tuple[Daemon, str]:
        port = free_port()
        server = Daemon(port, delay)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server, f"127.0.0.1:{port}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def line(qid, to, pid, tls=None):
    relay = f"mx.{to.partition('@')[2]}[192.0.2.25]:25"
    lines = (
        [f"{HOST}/smtp[{pid}]: {tls} TLS connection established to {relay}: TLSv1.3 with cipher X"]
        if tls
        else []
    )
    lines.append(f"{HOST}/smtp[{pid}]: {qid}: to=<{to}>, relay={relay}, dsn=2.0.0, status=sent (250 ok)")
    return lines


def deliver(queue, sts, deliveries):
    """Feed (address, TLS word or None) deliveries through a Tracker; the warnings logged."""
    tracker = tracking.Tracker(queue, sts_testing=sts)
    qids = [f"4Fk2ab0X{i:04d}" for i in range(len(deliveries))]
    ids = submitted(queue, [to for to, _ in deliveries], qids) if deliveries else []
    for pid, (qid, (to, tls)) in enumerate(zip(qids, deliveries, strict=True), start=800):
        for text in line(qid, to, pid, tls):
            tracker.handle(tracking.parse_syslog_line(text))
    sts.pending.join()  # the lookups ran (tracking itself did not wait for them)
    assert [queue.recipient(r)["state"] for r in ids] == ["delivered"] * len(deliveries)


def warnings(caplog):
    return [r.getMessage() for r in caplog.records if "event=mta_sts_testing " in r.getMessage()]


def test_socketmap_query_speaks_netstrings_to_the_daemon(daemon):
    _, address = daemon()
    assert (
        socketmap_query(address, "testing", "testing.test")
        == "OK secure match=mx.testing.test servername=hostname"
    )
    assert socketmap_query(address, "postfix", "testing.test") == "NOTFOUND "


@pytest.mark.parametrize("count", [0, 1, 2])
def test_testing_policy_and_unverified_delivery_warn_once_per_domain(daemon, queue, caplog, count):
    server, address = daemon()
    caplog.set_level(logging.DEBUG, "bulkrelay.tracking")
    deliver(queue, StsTestingLog(address), [(f"r{i}@testing.test", "Trusted") for i in range(count)])
    found = warnings(caplog)
    assert len(found) == min(count, 1)  # one per domain per interval, not one per recipient
    if count:
        assert (
            "domain=testing.test policy_mx=mx.testing.test relay=mx.testing.test[192.0.2.25]:25" in found[0]
        )
        assert "tls=trusted" in found[0] and "would have been deferred" in found[0]
        assert server.asked == ["testing testing.test", "postfix testing.test"]
    else:
        assert server.asked == []


def test_two_domains_in_clear_text_warn_each_and_again_after_the_interval(daemon, queue, caplog):
    _, address = daemon()
    now = [0.0]
    sts = StsTestingLog(address, every=3600, clock=lambda: now[0])
    deliver(queue, sts, [("a@testing.test", None), ("b@slow.test", "Anonymous"), ("c@testing.test", None)])
    assert [w.split()[1] for w in warnings(caplog)] == ["domain=testing.test", "domain=slow.test"]
    assert "tls=none" in warnings(caplog)[0]
    now[0] = 3600.0
    deliver(queue, sts, [("d@testing.test", "Untrusted")])
    assert len(warnings(caplog)) == 3


def test_enforced_no_policy_and_verified_deliveries_do_not_warn(daemon, queue, caplog):
    server, address = daemon()
    deliver(
        queue,
        StsTestingLog(address),
        [
            ("a@enforce.test", "Untrusted"),  # Postfix had the policy: an override lowered it
            ("b@nopolicy.test", None),
            ("c@testing.test", "Verified"),  # would have passed the policy
        ],
    )
    assert warnings(caplog) == []
    assert server.asked == ["testing enforce.test", "postfix enforce.test", "testing nopolicy.test"]


def test_a_dead_or_slow_daemon_never_delays_or_breaks_tracking(daemon, queue, caplog):
    caplog.set_level(logging.DEBUG, "bulkrelay.tracking")
    dead = StsTestingLog(f"127.0.0.1:{free_port()}")
    deliver(queue, dead, [("a@testing.test", None), ("b@testing2.test", None)])
    assert warnings(caplog) == []
    assert sum("event=mta_sts_testing_unknown" in r.getMessage() for r in caplog.records) == 2
    assert all(r.levelno == logging.DEBUG for r in caplog.records if "mta_sts" in r.getMessage())

    _, address = daemon(delay=2.0)
    slow = StsTestingLog(address, timeout=0.3)
    tracker = tracking.Tracker(queue, sts_testing=slow)
    (row,) = submitted(queue, ["c@slow.test"], ["4Fk2ab0XZZZ9"])
    started = time.monotonic()
    for text in line("4Fk2ab0XZZZ9", "c@slow.test", 900):
        tracker.handle(tracking.parse_syslog_line(text))
    # tracking went on before the lookup could end (it takes the whole 0.3 s timeout)
    assert time.monotonic() - started < 0.25
    assert queue.recipient(row)["state"] == "delivered"
    slow.pending.join()
    assert warnings(caplog) == []
    assert "timed out" in caplog.records[-1].getMessage()


def test_the_map_address_is_checked_and_empty_means_off():
    assert parse({}).tracking.mta_sts_map == ""
    assert parse({"tracking": {"mta_sts_map": "127.0.0.1:8461"}}).tracking.mta_sts_map == "127.0.0.1:8461"
    for bad in ("localhost:8461", "127.0.0.1", 8461):
        with pytest.raises(ConfigError, match=r"tracking\.mta_sts_map"):
            parse({"tracking": {"mta_sts_map": bad}})


def test_domains_asked_longer_ago_than_the_interval_are_forgotten(monkeypatch):
    """The per-domain memory stays bounded on a long-running relay; one still inside the
    interval is kept (it must not be asked again)."""
    monkeypatch.setattr(ststesting, "ASKED_KEPT", 2)
    now = [0.0]
    sts = StsTestingLog(f"127.0.0.1:{free_port()}", every=10, clock=lambda: now[0])
    sts.note("a@old.test", "", "Trusted")
    now[0] = 5.0
    sts.note("b@recent.test", "", "Trusted")
    now[0] = 12.0
    sts.note("c@new.test", "", "Trusted")
    assert sts.asked == {"recent.test": 5.0, "new.test": 12.0}
