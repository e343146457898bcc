"""bulkrelay.dns.resolver: nameserver parsing, absolute names, and the four answer states."""

import pytest
from conftest import LoopbackDns

from bulkrelay.dns import resolver as r


@pytest.mark.parametrize(
    ("text", "address", "port"),
    [
        ("198.51.100.53", "198.51.100.53", 53),
        ("198.51.100.53:5300", "198.51.100.53", 5300),
        ("2001:db8:100::53", "2001:db8:100::53", 53),
        ("[2001:db8:100::53]:5300", "2001:db8:100::53", 5300),
        ("[2001:db8:100::53]", "2001:db8:100::53", 53),
        (" 127.0.0.1 ", "127.0.0.1", 53),
    ],
)
def test_parse_nameserver(text, address, port):
    ns = r.parse_nameserver(text)
    assert (ns.address, ns.port) == (address, port)
    assert r.parse_nameserver(str(ns)) == ns


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("ns1.example.test", "not an IP address"),
        ("198.51.100.53:99999", "invalid port"),
        ("198.51.100.53:0", "invalid port"),
        ("198.51.100.53:abc", "invalid port"),
        ("[2001:db8::1", "closing"),
        ("[2001:db8::1]x", "unexpected"),
        ("", "empty"),
    ],
)
def test_parse_nameserver_rejects(text, words):
    with pytest.raises(r.NameserverError, match=words) as info:
        r.parse_nameserver(text)
    assert "IP:port" in str(info.value)


def test_parse_nameservers_string_and_none():
    assert r.parse_nameservers(None) == []
    assert [str(n) for n in r.parse_nameservers("198.51.100.53, 198.51.100.54:5300")] == [
        "198.51.100.53",
        "198.51.100.54:5300",
    ]


def test_absolute_and_reverse():
    assert r.absolute("Example.TEST") == "example.test."
    assert r.absolute("example.test.") == "example.test."
    assert r.relative("Example.Test.") == "example.test"
    assert r.reverse_name("198.51.100.25") == "25.100.51.198.in-addr.arpa."
    assert r.reverse_name("2001:db8:100::25").endswith(".0.0.1.0.8.b.d.0.1.0.0.2.ip6.arpa.")


def test_timeout_must_be_positive():
    with pytest.raises(ValueError, match="timeout"):
        r.Resolver(["127.0.0.1"], timeout=0)


def test_static_resolver_states_and_cname():
    zone = {
        "a.test": [("A", "192.0.2.1"), ("TXT", ["v=spf1 ", "-all"])],
        "alias.test": [("CNAME", "a.test")],
        "slow.test": [("TIMEOUT", None)],
    }
    res = r.StaticResolver(zone)
    assert res.query("a.test.", "A").records == ["192.0.2.1"]
    assert res.query("A.test", "TXT").texts() == ["v=spf1 -all"]
    assert res.query("alias.test", "A").records == ["192.0.2.1"]
    assert res.query("a.test", "MX").status == r.NODATA
    assert res.query("nx.test", "A").status == r.NXDOMAIN
    slow = res.query("slow.test", "TXT")
    assert slow.failed and not slow.absent


@pytest.fixture
def server():
    srv = LoopbackDns(
        {
            ("relay.example.test.", "A"): "198.51.100.25",
            ("relay.example.test.", "MX"): "10 mail.example.test.",
            ("example.test.", "TXT"): '"v=spf1 " "ip4:198.51.100.25 -all"',
            ("empty.example.test.", "TXT"): "nodata",
            ("broken.example.test.", "TXT"): "servfail",
            ("slow.example.test.", "TXT"): "drop",
        }
    )
    yield srv
    srv.close()


def test_live_resolver_four_states(server):
    res = r.Resolver([f"127.0.0.1:{server.port}"], timeout=1.0)
    a = res.query("relay.example.test", "A")
    assert a.ok and a.records == ["198.51.100.25"]
    assert res.query("relay.example.test", "MX").records == [(10, "mail.example.test")]
    assert res.query("example.test", "TXT").texts() == ["v=spf1 ip4:198.51.100.25 -all"]
    assert res.query("empty.example.test", "TXT").status == r.NODATA
    assert res.query("nothere.example.test", "TXT").status == r.NXDOMAIN
    servfail = res.query("broken.example.test", "TXT")
    assert servfail.status == r.ERROR and "SERVFAIL" in servfail.error
    slow = res.query("slow.example.test", "TXT")
    assert slow.status == r.ERROR and "timeout" in slow.error
    # every name went out absolute and with no search domain appended
    assert all(name.endswith(".test.") for name in server.seen)
