"""The self-test cache file (bulkrelay.dnsbl.selftest_cache) as the checker uses it: one question
per list while a self-test is cached, the cache's age, damaged files, cached failures, and the
UDP socket pool against a real DNS server on loopback."""

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import tempfile
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest
from conftest import FakeDns, LoopbackDns
from support import free_port

from bulkrelay.dnsbl.checker import Checker
from bulkrelay.dnsbl.lists import Settings
from bulkrelay.dnsbl.selftest_cache import MAX_AGE

RELAY = "198.51.100.25"
RELAY_REV = "25.100.51.198"
T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def healthy(zone, relay=None):
    """A list that passes its RFC 5782 self-test (and answers `relay` for the relay, if given)."""
    answers = {f"2.0.0.127.{zone}.": {"A": ["127.0.0.2"]}}
    if relay is not None:
        answers[f"{RELAY_REV}.{zone}."] = relay
    return answers


def dead(zone):
    """A list that answers "listed" for every name, its test point 127.0.0.1 included."""
    hit = {"A": ["127.0.0.2"]}
    return {f"2.0.0.127.{zone}.": hit, f"1.0.0.127.{zone}.": hit, f"{RELAY_REV}.{zone}.": hit}


def check(fake, zones, cache, at=T0, targets=(RELAY,), **kw):
    settings = Settings.from_mapping(
        {"lists": [{"zone": z} for z in zones], "nameservers": ["192.0.2.53"], **kw}
    )
    fake.asked.clear()
    return Checker(settings, transport=fake, clock=lambda: at, selftest_cache=cache).run(list(targets))


def outcomes(result):
    return [(r.zone, r.outcome, r.error) for r in result.results]


@pytest.mark.parametrize("lists", [0, 1, 2])
def test_a_cached_run_asks_one_question_per_list(tmp_path, lists):
    zones = [f"bl{i}.test" for i in range(lists)]
    answers = {k: v for z in zones for k, v in healthy(z).items()}
    fake = FakeDns(answers)
    cache = tmp_path / "selftest.json"
    # No list applies to a domain target: the case of zero lists (settings need at least one).
    targets = (RELAY,) if lists else ("example.test",)
    first = check(fake, zones or ["bl.test"], cache, targets=targets)
    assert len(fake.asked) == 3 * lists
    second = check(fake, zones or ["bl.test"], cache, at=T0 + timedelta(minutes=5), targets=targets)
    assert sorted(name for name, _type, _server in fake.asked) == sorted(f"{RELAY_REV}.{z}." for z in zones)
    assert outcomes(second) == outcomes(first) == [(z, "clean", "") for z in zones]
    if lists:
        entries = json.loads(cache.read_text())["entries"]
        assert sorted(e["zone"] for e in entries.values()) == zones
        assert all(e["problem"] == "" and e["family"] == "ip4" for e in entries.values())
    else:
        assert not cache.exists()  # nothing asked, nothing written


def test_an_expired_entry_is_asked_again(tmp_path):
    fake = FakeDns(healthy("bl.test"))
    cache = tmp_path / "selftest.json"
    check(fake, ["bl.test"], cache)
    check(fake, ["bl.test"], cache, at=T0 + timedelta(seconds=MAX_AGE - 1))
    assert len(fake.asked) == 1
    check(fake, ["bl.test"], cache, at=T0 + timedelta(seconds=MAX_AGE))
    assert len(fake.asked) == 3
    # ... and the answer renewed the entry: the run after asks one question again.
    check(fake, ["bl.test"], cache, at=T0 + timedelta(seconds=MAX_AGE + 60))
    assert len(fake.asked) == 1


@pytest.mark.parametrize(
    "content",
    [
        "{broken",
        "[]",
        json.dumps({"format": 99, "entries": {}}),
        json.dumps({"format": 1, "entries": []}),
        "KEYS",  # valid keys, but asked_at from the future / not a number / problem not a string
    ],
)
def test_a_damaged_cache_is_ignored_and_replaced(tmp_path, content):
    fake = FakeDns(healthy("bl.test"))
    cache = tmp_path / "selftest.json"
    check(fake, ["bl.test"], cache)
    if content == "KEYS":
        (key,) = json.loads(cache.read_text())["entries"]
        bad = [{"asked_at": T0.timestamp() + 3600, "problem": ""}, {"asked_at": "now", "problem": ""}]
        bad.append({"asked_at": T0.timestamp(), "problem": None})
        for entry in bad:
            cache.write_text(json.dumps({"format": 1, "entries": {key: entry}}))
            check(fake, ["bl.test"], cache, at=T0 + timedelta(minutes=1))
            assert len(fake.asked) == 3, entry
        return
    cache.write_text(content)
    result = check(fake, ["bl.test"], cache, at=T0 + timedelta(minutes=1))
    assert len(fake.asked) == 3 and outcomes(result) == [("bl.test", "clean", "")]
    assert json.loads(cache.read_text())["format"] == 1  # rewritten whole
    check(fake, ["bl.test"], cache, at=T0 + timedelta(minutes=2))
    assert len(fake.asked) == 1


def test_a_failed_selftest_stays_unknown_while_cached(tmp_path):
    cache = tmp_path / "selftest.json"
    fake = FakeDns(dead("dead.test") | healthy("bl.test"))
    first = check(fake, ["dead.test", "bl.test"], cache)
    assert first.results[0].outcome == "error" and "dead list" in first.results[0].error
    # The list is repaired, but its failure is cached: still UNKNOWN, with the same reason, and
    # the list is not asked at all (its answer could not count).
    fake.answers = {k.lower(): v for k, v in (healthy("dead.test") | healthy("bl.test")).items()}
    second = check(fake, ["dead.test", "bl.test"], cache, at=T0 + timedelta(minutes=30))
    assert outcomes(second) == outcomes(first)
    assert [name for name, _t, _s in fake.asked] == [f"{RELAY_REV}.bl.test."]
    third = check(fake, ["dead.test", "bl.test"], cache, at=T0 + timedelta(seconds=MAX_AGE))
    assert outcomes(third) == [("dead.test", "clean", ""), ("bl.test", "clean", "")]


@pytest.mark.parametrize("trouble", ["TIMEOUT", "SERVFAIL"])
def test_a_selftest_that_could_not_tell_is_not_cached(tmp_path, trouble):
    answers = healthy("bl.test")
    answers["2.0.0.127.bl.test."] = trouble
    fake = FakeDns(answers)
    cache = tmp_path / "selftest.json"
    first = check(fake, ["bl.test"], cache, timeout=0.2, retries=0)
    assert first.results[0].outcome == "error"
    fake.answers = {k.lower(): v for k, v in healthy("bl.test").items()}
    second = check(fake, ["bl.test"], cache, at=T0 + timedelta(minutes=1))
    assert len(fake.asked) == 3 and outcomes(second) == [("bl.test", "clean", "")]


def test_a_cached_pass_is_confirmed_when_the_list_answers(tmp_path):
    """The list that started to answer "listed" for everything after its self-test was cached is
    found out in the same run: any answer but NXDOMAIN asks the self-test again."""
    cache = tmp_path / "selftest.json"
    fake = FakeDns(healthy("bl.test"))
    check(fake, ["bl.test"], cache)
    fake.answers = {k.lower(): v for k, v in dead("bl.test").items()}
    result = check(fake, ["bl.test"], cache, at=T0 + timedelta(minutes=1))
    assert not result.listings
    assert "dead list" in result.errors[0].error
    assert "dead list" in json.loads(cache.read_text())["entries"].popitem()[1]["problem"]


def test_a_listing_with_a_cached_pass_keeps_its_reason(tmp_path):
    cache = tmp_path / "selftest.json"
    fake = FakeDns(healthy("bl.test", relay={"A": ["127.0.0.2"], "TXT": ["spam trap"]}))
    check(fake, ["bl.test"], cache)
    result = check(fake, ["bl.test"], cache, at=T0 + timedelta(minutes=1))
    assert [(r.zone, r.codes, r.reason) for r in result.listings] == [
        ("bl.test", ("127.0.0.2",), "spam trap")
    ]
    asked = sorted((name, rdtype) for name, rdtype, _s in fake.asked)
    assert asked == sorted(
        [(f"{RELAY_REV}.bl.test.", "A"), (f"{RELAY_REV}.bl.test.", "TXT")]
        + [(f"{p}.bl.test.", "A") for p in ("1.0.0.127", "2.0.0.127")]
    )


def test_changed_settings_ask_again_and_the_file_names_no_dqs_key(tmp_path):
    key = "abcdefghijklmnopqrstuvwxyz"
    zone = f"{key}.zen.dq.test"
    fake = FakeDns(healthy(zone))
    cache = tmp_path / "selftest.json"
    lists = [{"zone": "zen.test", "dqs_zone": "zen.dq.test"}]
    settings = {"lists": lists, "nameservers": ["192.0.2.53"], "dqs_key": key}
    for at, servers, asked in ((0, ["192.0.2.53"], 3), (1, ["192.0.2.53"], 1), (2, ["192.0.2.54"], 3)):
        fake.asked.clear()
        when = T0 + timedelta(minutes=at)
        cfg = Settings.from_mapping(settings | {"nameservers": servers})
        Checker(cfg, transport=fake, clock=lambda when=when: when, selftest_cache=cache).run([RELAY])
        assert len(fake.asked) == asked, servers
    assert key not in cache.read_text()


def test_no_directory_no_file(tmp_path):
    fake = FakeDns(healthy("bl.test"))
    result = check(fake, ["bl.test"], tmp_path / "absent" / "selftest.json")
    assert outcomes(result) == [("bl.test", "clean", "")]
    assert not (tmp_path / "absent").exists()


def test_a_cache_that_cannot_be_read_or_written_costs_questions_not_the_check(tmp_path):
    fake = FakeDns(healthy("bl.test"))
    cache = tmp_path / "selftest.json"
    cache.mkdir()  # reading it fails, and so does renaming a file over it
    for minute in (0, 1):
        result = check(fake, ["bl.test"], cache, at=T0 + timedelta(minutes=minute))
        assert outcomes(result) == [("bl.test", "clean", "")] and len(fake.asked) == 3
    assert cache.is_dir() and [p.name for p in tmp_path.iterdir()] == ["selftest.json"]  # no temp file left


# --- the UDP socket pool, against a real DNS server on loopback ------------------------------


def test_one_socket_asks_everything_and_a_silent_list_times_out_alone():
    zones = ["a.test", "b.test", "silent.test"]
    targets = [RELAY, "198.51.100.26", "198.51.100.27"]
    table = {}
    for zone in zones[:2]:
        table[(f"2.0.0.127.{zone}.", "A")] = "127.0.0.2"
        table[(f"{RELAY_REV}.{zone}.", "A")] = "127.0.0.2"
        table[(f"{RELAY_REV}.{zone}.", "TXT")] = '"listed here"'
    table[("2.0.0.127.silent.test.", "A")] = "drop"
    server = LoopbackDns(table)
    try:
        settings = Settings.from_mapping(
            {
                "lists": [{"zone": z} for z in zones],
                "nameservers": [f"127.0.0.1:{server.port}"],
                "timeout": 0.5,
            }
        )
        result = Checker(settings).run(targets)
    finally:
        server.close()
    assert [(r.target, r.zone, r.reason) for r in result.listings] == [
        (RELAY, "a.test", "listed here"),
        (RELAY, "b.test", "listed here"),
    ]
    assert [(r.target, r.zone) for r in result.results if r.outcome == "clean"] == [
        (t, z) for z in zones[:2] for t in targets[1:]
    ]
    assert {r.zone for r in result.errors} == {"silent.test"}
    assert all("timeout" in r.error for r in result.errors)
    # 3 lists x (3 targets + 2 test points) + 2 TXT, the silent one asked twice (a retry).
    assert len(server.seen) == 3 * 5 + 2 + 1
    assert len(server.peers) == 1  # one socket (source port) for every question


def test_a_closed_port_is_a_network_error_at_once():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # nothing listens there now: the kernel answers ICMP port unreachable
    settings = Settings.from_mapping(
        {"lists": [{"zone": "bl.test"}], "nameservers": [f"127.0.0.1:{port}"], "timeout": 2}
    )
    result = Checker(settings).run([RELAY])
    (error,) = result.errors
    assert "network error" in error.error and "refused" in error.error.lower()
    assert result.elapsed < 1.0


def udp_and_tcp_on_one_port(tries=20):
    """A UDP and a listening TCP socket on the same free loopback port: the port the kernel gives
    the UDP socket may be taken for TCP (a `make unit` run failed with "Address already in use")."""
    for _ in range(tries):
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind(("127.0.0.1", 0))
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            tcp.bind(("127.0.0.1", udp.getsockname()[1]))
        except OSError:
            udp.close()
            tcp.close()
            continue
        tcp.listen()
        return udp, tcp
    raise AssertionError(f"no loopback port free for both UDP and TCP in {tries} tries")


def test_a_truncated_answer_is_asked_again_over_tcp():
    """The pool's UDP answer with TC set: the whole answer comes over TCP from the same server."""
    udp, tcp = udp_and_tcp_on_one_port()
    port = udp.getsockname()[1]
    asked_over_tcp = []

    def answer(query):
        response = dns.message.make_response(query)
        name = query.question[0].name
        if name.to_text() in (f"{RELAY_REV}.bl.test.", "2.0.0.127.bl.test."):
            response.answer.append(dns.rrset.from_text(name, 60, "IN", "A", "127.0.0.2"))
        else:
            response.set_rcode(dns.rcode.NXDOMAIN)
        return response

    def serve_udp():
        with contextlib.suppress(OSError):
            while True:
                data, peer = udp.recvfrom(4096)
                response = dns.message.make_response(dns.message.from_wire(data))
                response.flags |= dns.flags.TC
                udp.sendto(response.to_wire(), peer)

    def serve_tcp():
        with contextlib.suppress(OSError):
            while True:
                conn, _peer = tcp.accept()
                with conn:
                    query, _when = dns.query.receive_tcp(conn)
                    asked_over_tcp.append(query.question[0].name.to_text())
                    dns.query.send_tcp(conn, answer(query))

    for serve in (serve_udp, serve_tcp):
        threading.Thread(target=serve, daemon=True).start()
    try:
        settings = Settings.from_mapping(
            {"lists": [{"zone": "bl.test"}], "nameservers": [f"127.0.0.1:{port}"], "timeout": 2}
        )
        result = Checker(settings).run([RELAY])
    finally:
        udp.close()
        tcp.close()
    assert [(r.zone, r.codes) for r in result.listings] == [("bl.test", ("127.0.0.2",))]
    assert f"{RELAY_REV}.bl.test." in asked_over_tcp and len(asked_over_tcp) == 4  # A x3 + TXT


# --- a listing seen last run: its reason and self-test asked with it (issue 16) --------------


class Rounds:
    """A transport that answers from `fake` after `delay`, noting for each question how many
    answers had arrived when it was asked (0 for every question: one round trip)."""

    def __init__(self, fake, delay=0.02):
        self.fake, self.delay = fake, delay
        self.answered = 0
        self.asked = []

    async def __call__(self, query, server, timeout):
        question = query.question[0]
        self.asked.append((question.name.to_text(), dns.rdatatype.to_text(question.rdtype), self.answered))
        await asyncio.sleep(self.delay)
        response = await self.fake(query, server, timeout)
        self.answered += 1
        return response


@pytest.mark.parametrize("listed", [0, 1, 2])
def test_a_known_listing_costs_no_second_round_trip(tmp_path, listed):
    zones = ["bl0.test", "bl1.test"]
    answers = {}
    for i, zone in enumerate(zones):
        answers |= healthy(zone, relay={"A": ["127.0.0.2"], "TXT": [f"why {zone}"]} if i < listed else None)
    settings = Settings.from_mapping({"lists": [{"zone": z} for z in zones], "nameservers": ["192.0.2.53"]})
    cache = tmp_path / "selftest.json"

    def run(minute, fake):
        transport = Rounds(fake)
        when = T0 + timedelta(minutes=minute)
        result = Checker(settings, transport=transport, clock=lambda: when, selftest_cache=cache).run([RELAY])
        return result, transport.asked

    fake = FakeDns(answers)
    first, asked = run(0, fake)  # the self-tests asked at once, the reasons after the A answers
    assert sum(1 for _n, _t, after in asked if after) == listed
    # A listing new since the last run (no hit in the file): reason and confirmation wait.
    cache.write_text(json.dumps(json.loads(cache.read_text()) | {"hits": {}}))
    _new, asked = run(1, fake)
    assert sum(1 for _n, _t, after in asked if after) == 3 * listed
    second, asked = run(2, fake)  # the hits of the last run: everything leaves at once
    assert [after for _n, _t, after in asked] == [0] * (2 + 3 * listed)
    expected = [(zone, ("127.0.0.2",), f"why {zone}") for zone in zones[:listed]]
    assert [(r.zone, r.codes, r.reason) for r in first.listings] == expected
    assert [(r.zone, r.codes, r.reason) for r in second.listings] == expected
    assert outcomes(second) == outcomes(first)
    # The listings end: one run pays the questions asked on the hint, the next asks one per list.
    fake.answers = {k.lower(): v for z in zones for k, v in healthy(z).items()}
    third, asked = run(3, fake)
    assert len(asked) == 2 + 3 * listed and not third.listings and not third.errors
    _fourth, asked = run(4, fake)
    assert len(asked) == 2


def test_hits_expire_and_bad_hits_are_ignored(tmp_path):
    fake = FakeDns(healthy("bl.test", relay={"A": ["127.0.0.2"], "TXT": ["spam"]}))
    cache = tmp_path / "selftest.json"
    check(fake, ["bl.test"], cache)
    data = json.loads(cache.read_text())
    (key,) = data["hits"]
    assert RELAY_REV not in cache.read_text()  # hashed, as the self-test keys
    check(fake, ["bl.test"], cache, at=T0 + timedelta(minutes=1))
    assert len(fake.asked) == 4  # A, TXT and the confirming self-test, all at once
    for hits in ({key: {"asked_at": "now"}}, [key], {key: {"asked_at": T0.timestamp() - MAX_AGE}}):
        cache.write_text(json.dumps(data | {"hits": hits}))
        result = check(fake, ["bl.test"], cache, at=T0 + timedelta(minutes=2))
        assert [r.reason for r in result.listings] == ["spam"], hits


@pytest.fixture
def rbldnsd():
    """Debian's rbldnsd on loopback serving bl.test, which lists RELAY with a reason."""
    if not Path("/usr/sbin/rbldnsd").exists():
        pytest.skip("rbldnsd is not installed (apt-get install rbldnsd)")
    with tempfile.TemporaryDirectory() as data:
        os.chmod(data, 0o755)
        Path(data, "bl.test").write_text(":127.0.0.2:Listed for spam trap hits\n127.0.0.2\n" + RELAY + "\n")
        port = free_port()
        argv = ["/usr/sbin/rbldnsd", "-n", "-q", "-b", f"127.0.0.1/{port}", "-w", data, "-u", "nobody"]
        proc = subprocess.Popen([*argv, "bl.test:ip4set:bl.test"], stderr=subprocess.PIPE)
        try:
            ask = dns.message.make_query("2.0.0.127.bl.test.", "A")
            for _ in range(50):
                with contextlib.suppress(OSError, dns.exception.Timeout):
                    dns.query.udp(ask, "127.0.0.1", port=port, timeout=0.2)
                    break
            yield f"127.0.0.1:{port}"
        finally:
            proc.terminate()
            proc.wait(5)


def test_rbldnsd_listing_keeps_its_reason_with_and_without_the_hint(tmp_path, rbldnsd):
    settings = Settings.from_mapping({"lists": [{"zone": "bl.test"}], "nameservers": [rbldnsd]})
    cache = tmp_path / "selftest.json"
    for minute in (0, 1, 2):  # nothing cached; then the self-test cached and the hit known
        when = T0 + timedelta(minutes=minute)
        checker = Checker(settings, clock=lambda when=when: when, selftest_cache=cache)
        result = checker.run([RELAY, "198.51.100.26"])
        assert [(r.target, r.codes, r.reason) for r in result.listings] == [
            (RELAY, ("127.0.0.2",), "Listed for spam trap hits")
        ], minute
        assert outcomes(result)[1] == ("bl.test", "clean", "") and not result.errors
    assert len(json.loads(cache.read_text())["hits"]) == 1


def lost_answer_table(lost):
    table = {("2.0.0.127.bl.test.", "A"): "127.0.0.2", (f"{RELAY_REV}.bl.test.", "A"): "127.0.0.2"}
    table[(f"{RELAY_REV}.bl.test.", "TXT")] = '"spam trap"'
    table[(f"{RELAY_REV}.bl.test.", lost)] = "drop"
    return table


@pytest.mark.parametrize("hinted", [False, True])
def test_a_lost_reason_never_undoes_the_listing(tmp_path, hinted):
    cache = tmp_path / "selftest.json"
    server = LoopbackDns(lost_answer_table("TXT"))
    try:
        settings = Settings.from_mapping(
            {"lists": [{"zone": "bl.test"}], "nameservers": [f"127.0.0.1:{server.port}"], "timeout": 0.4}
        )
        if hinted:  # a run that had the reason, so the next one asks it with the A question
            server.table = lost_answer_table("AAAA")
            Checker(settings, selftest_cache=cache).run([RELAY])
            server.table = lost_answer_table("TXT")
        result = Checker(settings, selftest_cache=cache).run([RELAY])
    finally:
        server.close()
    assert [(r.zone, r.outcome, r.codes, r.reason) for r in result.results] == [
        ("bl.test", "listed", ("127.0.0.2",), "")
    ]
    assert "TXT" not in str(result.results[0].as_dict())  # no reason made up


def test_a_lost_answer_is_could_not_tell_even_when_its_reason_came(tmp_path):
    cache = tmp_path / "selftest.json"
    server = LoopbackDns(lost_answer_table("AAAA"))
    try:
        settings = Settings.from_mapping(
            {"lists": [{"zone": "bl.test"}], "nameservers": [f"127.0.0.1:{server.port}"], "timeout": 0.4}
        )
        assert Checker(settings, selftest_cache=cache).run([RELAY]).listings  # the hint
        server.table = lost_answer_table("A")
        result = Checker(settings, selftest_cache=cache).run([RELAY])
    finally:
        server.close()
    (error,) = result.errors
    assert not result.listings and "timeout" in error.error and error.reason == ""
    assert len(json.loads(cache.read_text())["hits"]) == 1  # a timeout forgets nothing
