"""DKIM rotation: which step comes next from each state (0, 1 or 2 selectors besides the
active one... and none at all), the selector names, refusal of impossible states, and the
per-nameserver check that gates the switch."""

import datetime as dt

import pytest
from support import dkim_txt

from bulkrelay import dkimrotation as rot
from bulkrelay.dns import dkim
from bulkrelay.dns.records import dkim_rrset
from bulkrelay.dns.resolver import StaticResolver

NOW = 1_764_500_000  # 2025-11-30 10:53 UTC
DAY = 86400


def test_never_rotated_starts_with_the_configured_selector():
    out = rot.plan(None, configured="lab2026", now=NOW, grace_days=7, prefix="bulk")
    assert out["state"] == {
        "active": "lab2026",
        "next": "",
        "previous": "",
        "published_at": 0,
        "switched_at": 0,
    }
    assert out["step"] == rot.START
    assert out["after_start"] == {
        "active": "lab2026",
        "next": "bulk20251130",
        "previous": "",
        "published_at": NOW,
        "switched_at": 0,
    }
    # the same run may switch once DNS serves the new key
    assert out["after_switch"]["active"] == "bulk20251130" and out["after_switch"]["previous"] == "lab2026"
    assert "after_retire" not in out


def test_one_pending_selector_is_switched_to():
    fact = {
        "active": "lab2026",
        "next": "bulk20251130",
        "previous": "",
        "published_at": NOW,
        "switched_at": 0,
    }
    out = rot.plan(fact, configured="lab2026", now=NOW + 60, grace_days=7, prefix="bulk")
    assert out["step"] == rot.SWITCH
    assert "after_start" not in out
    assert out["after_switch"] == {
        "active": "bulk20251130",
        "next": "",
        "previous": "lab2026",
        "published_at": 0,
        "switched_at": NOW + 60,
    }


@pytest.mark.parametrize(("elapsed", "step"), [(0, rot.WAIT), (7 * DAY - 1, rot.WAIT), (7 * DAY, rot.RETIRE)])
def test_previous_selector_waits_for_the_grace_period(elapsed, step):
    fact = {"active": "bulk20251130", "previous": "lab2026", "switched_at": NOW}
    out = rot.plan(fact, configured="lab2026", now=NOW + elapsed, grace_days=7, prefix="bulk")
    assert out["step"] == step
    assert out["grace_ends"] == "2025-12-07 10:53 UTC"
    assert out["after_retire"]["active"] == "bulk20251130" and out["after_retire"]["previous"] == ""
    assert "after_switch" not in out


def test_after_retiring_the_next_run_starts_again_and_the_configured_selector_no_longer_signs():
    fact = {"active": "bulk20251130"}
    out = rot.plan(fact, configured="lab2026", now=NOW + 30 * DAY, grace_days=7, prefix="bulk")
    assert out["step"] == rot.START
    assert out["after_start"]["active"] == "bulk20251130"
    assert out["after_start"]["next"] == "bulk20251230"


def test_grace_zero_retires_at_once():
    fact = {"active": "b", "previous": "a", "switched_at": NOW}
    assert rot.plan(fact, configured="a", now=NOW, grace_days=0, prefix="x")["step"] == rot.RETIRE


def test_selector_names_skip_the_taken_ones():
    day = dt.date(2026, 11, 30)
    assert rot.next_selector("bulk", day, []) == "bulk20261130"
    assert rot.next_selector("bulk", day, ["bulk20261130"]) == "bulk20261130-2"
    assert rot.next_selector("bulk", day, ["bulk20261130", "bulk20261130-2"]) == "bulk20261130-3"
    with pytest.raises(rot.RotationError, match="not a DNS label"):
        rot.next_selector("Bulk_", day, [])


def test_a_rotation_under_way_does_not_start_again():
    with pytest.raises(rot.RotationError, match="under way"):
        rot.started(rot.RotationState("a", next="b"), "c", NOW)
    with pytest.raises(rot.RotationError, match="no next selector"):
        rot.switched(rot.RotationState("a"), NOW)


@pytest.mark.parametrize(
    ("fact", "words"),
    [
        ({"next": "b"}, "not readable"),
        ({"active": "a", "next": "b", "previous": "c"}, "both a next and a previous"),
        ({"active": "a", "next": "a"}, "one selector twice"),
        ({"active": "A B"}, "invalid selectors"),
        ({"active": "a", "switched_at": "yesterday"}, "not readable"),
    ],
)
def test_a_broken_state_file_is_refused_with_the_fix(fact, words):
    with pytest.raises(rot.RotationError, match=words) as err:
        rot.plan(fact, configured="a", now=NOW, grace_days=7, prefix="bulk", where="/etc/x.fact")
    assert "fix or remove /etc/x.fact" in str(err.value)


def test_state_keeps_every_selector_it_needs_signing_first():
    assert rot.RotationState("a").selectors() == ["a"]
    assert rot.RotationState("a", next="b").selectors() == ["a", "b"]
    assert rot.RotationState("b", previous="a").selectors() == ["b", "a"]


def test_dkim_rrset_and_its_removal_shape():
    txt = "v=DKIM1; k=rsa; p=" + "A" * 400
    rrset = dkim_rrset("Example.TEST.", "bulk1", txt, 300)
    assert rrset["fqdn"] == "bulk1._domainkey.example.test." and rrset["ttl"] == 300
    assert rrset["rdata"][0].count('" "') == 1  # two character-strings


# --- the DNS gate: every authoritative nameserver, each asked directly ----------------------

KEY = dkim_txt()
NAME = "bulk1._domainkey.example.test"


def lookup(ns_hosts):
    """The recursive view: the zone's NS records and their addresses."""
    zone = {"example.test": [("NS", h) for h in ns_hosts]}
    for i, host in enumerate(ns_hosts):
        zone[host] = [("A", f"192.0.2.{i + 1}"), ("AAAA", f"2001:db8::{i + 1}")]
    return StaticResolver(zone)


def servers(**per_address):
    """address -> what that nameserver serves at NAME ('key', 'none', 'timeout', or a TXT)."""
    made = {}
    for address, what in per_address.items():
        entries = {"key": [("TXT", KEY)], "none": [], "timeout": [("TIMEOUT", None)]}.get(
            what, [("TXT", what)]
        )
        made[address] = StaticResolver({NAME: entries} if entries else {"example.test": [("SOA", "x")]})
    return made


def gate(source, per_server, expected=""):
    return dkim.check_authoritative(
        source, "example.test", "bulk1", expected=expected, ask=per_server.__getitem__
    )


def test_gate_passes_only_when_every_address_serves_the_key():
    # 0 nameservers with an address: could not tell
    r = gate(StaticResolver({"example.test": [("NS", "ns1.example.test")]}), {})
    assert r.status == "error" and "no address" in r.message
    # 1 nameserver, both addresses serve it
    r = gate(lookup(["ns1.example.test"]), servers(**{"192.0.2.1": "key", "2001:db8::1": "key"}))
    assert r.status == "pass", r.message
    assert [s["server"] for s in r.details["servers"]] == [
        "ns1.example.test (192.0.2.1)",
        "ns1.example.test (2001:db8::1)",
    ]
    assert r.details["zone"] == "example.test"
    # 2 nameservers, the second one lags
    lag = servers(**{"192.0.2.1": "key", "2001:db8::1": "key", "192.0.2.2": "none", "2001:db8::2": "key"})
    r = gate(lookup(["ns1.example.test", "ns2.example.test"]), lag, expected=KEY)
    assert r.status == "fail"
    assert "ns2.example.test (192.0.2.2) does not serve the key" in r.message
    assert r.fix.startswith(f'publish TXT at {NAME}: "v=DKIM1; k=rsa; p=')
    assert [s["status"] for s in r.details["servers"]] == ["pass", "pass", "fail", "pass"]


def test_gate_timeout_is_could_not_tell_never_served():
    per = servers(**{"192.0.2.1": "key", "2001:db8::1": "timeout"})
    r = gate(lookup(["ns1.example.test"]), per)
    assert r.status == "error" and r.failed
    assert "ns1.example.test (2001:db8::1) could not tell" in r.message
    # a server without the key outweighs one that could not tell: DNS certainly does not serve it
    per = servers(**{"192.0.2.1": "none", "2001:db8::1": "timeout"})
    assert gate(lookup(["ns1.example.test"]), per).status == "fail"


def test_gate_other_key_on_one_server_fails():
    other = dkim_txt()
    per = servers(**{"192.0.2.1": "key", "2001:db8::1": other})
    assert gate(lookup(["ns1.example.test"]), per, expected=KEY).status == "fail"


def test_gate_finds_the_zone_above_the_name_and_says_when_dns_failed():
    # the NS query for the zone fails: could not tell
    broken = StaticResolver({"_domainkey.example.test": [], "example.test": [("TIMEOUT", None)]})
    r = gate(broken, {})
    assert r.status == "error" and "could not tell" in r.message
    # the address lookup fails: could not tell
    src = StaticResolver(
        {"example.test": [("NS", "ns1.example.test")], "ns1.example.test": [("TIMEOUT", None)]}
    )
    assert gate(src, {}).status == "error"
    # no NS anywhere above the name
    r = gate(StaticResolver({}), {})
    assert r.status == "error" and "no NS record above" in r.message
