"""The DNS checks (SPF, FCrDNS, MX, DKIM, DMARC) against a static zone: good and broken."""

import sys

import pytest
from support import dkim_txt

from bulkrelay.dns import dkim, dmarc, fcrdns, mx, spf
from bulkrelay.dns.resolver import StaticResolver, relative, reverse_name

RELAY = "relay.example.test"
IP4 = "198.51.100.25"
IP6 = "2001:db8:100::25"


KEY = dkim_txt()
OTHER_KEY = dkim_txt()


def zone(**overrides):
    base = {
        "example.test": [("TXT", f"v=spf1 ip4:{IP4} ip6:{IP6} mx ~all"), ("MX", (10, "mail.example.test"))],
        "mail.example.test": [("A", "198.51.100.80")],
        RELAY: [("A", IP4), ("AAAA", IP6), ("MX", (10, "mail.example.test"))],
        reverse_name(IP4): [("PTR", RELAY)],
        reverse_name(IP6): [("PTR", RELAY)],
        "lab2026._domainkey.example.test": [("TXT", KEY)],
        "_dmarc.example.test": [("TXT", "v=DMARC1; p=none; rua=mailto:dmarc@example.test")],
        "bounce.example.test": [("TXT", f"v=spf1 ip4:{IP4} -all"), ("MX", (10, "mail.example.test"))],
    }
    base = {relative(k): v for k, v in base.items()}
    for name, entries in overrides.items():
        if entries is None:
            base.pop(relative(name), None)
        else:
            base[relative(name)] = entries
    return StaticResolver(base)


def test_spf_pass_and_lookup_count():
    r = spf.check(zone(), "example.test", IP4, helo=RELAY)
    assert r.status == "pass", r.message
    assert r.details["result"] == "pass"
    assert r.details["lookups"] == 0
    assert spf.check(zone(), "example.test", IP6).status == "pass"


def test_spf_missing_relay_ip_says_what_to_set():
    z = zone(**{"example.test": [("TXT", "v=spf1 mx ~all"), ("MX", (10, "mail.example.test"))]})
    r = spf.check(z, "example.test", IP4, helo=RELAY)
    assert r.status == "fail"
    assert r.details["result"] == "softfail"
    assert "expected pass" in r.message
    assert f'"v=spf1 ip4:{IP4} mx ~all"' in r.fix


def test_spf_none_and_permerror_and_temperror():
    z = zone(**{"example.test": [("MX", (10, "mail.example.test"))]})
    r = spf.check(z, "example.test", IP4)
    assert (r.status, r.details["result"]) == ("fail", "none")
    assert "publish TXT at example.test" in r.fix
    two = zone(**{"example.test": [("TXT", "v=spf1 -all"), ("TXT", f"v=spf1 ip4:{IP4} -all")]})
    r = spf.check(two, "example.test", IP4)
    assert r.details["result"] == "permerror" and r.status == "fail"
    assert any("2 SPF records" in w for w in r.warnings)
    slow = zone(**{"example.test": [("TIMEOUT", None)]})
    r = spf.check(slow, "example.test", IP4)
    assert r.status == "error" and "could not tell" in r.message


def test_spf_too_many_lookups_is_permerror():
    includes = " ".join(f"include:i{n}.example.test" for n in range(11))
    z = {"example.test": [("TXT", f"v=spf1 {includes} ip4:{IP4} -all")]}
    for n in range(11):
        z[f"i{n}.example.test"] = [("TXT", "v=spf1 -all")]
    r = spf.check(StaticResolver(z), "example.test", IP4)
    assert r.details["result"] == "permerror"
    assert "lookups" in r.details["explanation"].lower()


def test_fcrdns_good_v4_v6():
    for ip in (IP4, IP6):
        r = fcrdns.check(zone(), ip, expected_name=RELAY, helo=RELAY)
        assert r.status == "pass", r.message
        assert r.details["confirmed_names"] == [RELAY]


def test_fcrdns_ptr_mismatch():
    z = zone(**{reverse_name(IP4).rstrip("."): [("PTR", "host25.provider.test")]})
    r = fcrdns.check(z, IP4, expected_name=RELAY, helo=RELAY)
    assert r.status == "fail"
    assert "PTR of 198.51.100.25 is host25.provider.test" in r.message
    assert "set its PTR" in r.fix and RELAY in r.fix


def test_fcrdns_wrong_ptr_fails_even_when_its_name_cannot_be_resolved():
    z = zone(
        **{reverse_name(IP4): [("PTR", "host25.provider.test")], "host25.provider.test": [("TIMEOUT", None)]}
    )
    r = fcrdns.check(z, IP4, expected_name=RELAY)
    assert r.status == "fail" and "expected relay.example.test" in r.message
    r = fcrdns.check(z, IP4)
    assert r.status == "error" and "could not tell" in r.message


def test_fcrdns_missing_ptr_and_unconfirmed_and_helo():
    z = zone(**{reverse_name(IP4).rstrip("."): None})
    r = fcrdns.check(z, IP4, expected_name=RELAY)
    assert r.status == "fail" and "no PTR" in r.message
    z = zone(**{RELAY: [("A", "198.51.100.99")]})
    r = fcrdns.check(z, IP4, expected_name=RELAY)
    assert r.status == "fail" and "not forward-confirmed" in r.message
    assert f"publish {RELAY}. A {IP4}" in r.fix
    r = fcrdns.check(zone(), IP4, expected_name=RELAY, helo="other.example.test")
    assert r.status == "fail" and "HELO name other.example.test differs" in r.message


def test_mx_good_missing_wrong_and_forbidden():
    assert mx.check(zone(), RELAY, expected=["mail.example.test"]).status == "pass"
    z = zone(**{RELAY: [("A", IP4)]})
    r = mx.check(z, RELAY, expected=["mail.example.test"])
    assert r.status == "fail" and "no MX" in r.message
    assert r.fix == f"publish {RELAY}. MX 10 mail.example.test."
    r = mx.check(zone(), RELAY, expected=["mx2.example.test"])
    assert r.status == "fail" and "expected mx2.example.test" in r.message
    z = zone(**{"bounce.example.test": [("MX", (10, RELAY))]})
    r = mx.check(z, "bounce.example.test", forbidden=[RELAY])
    assert r.status == "fail" and "accepts no mail" in r.message
    z = zone(**{RELAY: [("MX", (10, "gone.example.test"))]})
    assert "has no A/AAAA" in mx.check(z, RELAY).message


def test_dkim_good_mismatch_missing_and_broken():
    assert dkim.check(zone(), "example.test", "lab2026", expected=KEY).status == "pass"
    r = dkim.check(zone(), "example.test", "lab2026", expected=OTHER_KEY)
    assert r.status == "fail" and "not the relay's key" in r.message
    assert r.fix.startswith('publish TXT at lab2026._domainkey.example.test: "v=DKIM1')
    r = dkim.check(zone(), "example.test", "other", expected=KEY)
    assert r.status == "fail" and "no DKIM key record" in r.message
    bad = zone(**{"lab2026._domainkey.example.test": [("TXT", "v=DKIM1; k=rsa; p=not*base64")]})
    assert "not valid base64" in dkim.check(bad, "example.test", "lab2026").message
    revoked = zone(**{"lab2026._domainkey.example.test": [("TXT", "v=DKIM1; p=")]})
    assert "revoked" in dkim.check(revoked, "example.test", "lab2026").message


def test_dkim_weak_key_and_split_strings():
    weak = dkim_txt(1024)
    half = len(weak) // 2
    z = zone(**{"lab2026._domainkey.example.test": [("TXT", [weak[:half], weak[half:]])]})
    r = dkim.check(z, "example.test", "lab2026", expected=weak)
    assert r.status == "warn" and "1024 bits" in r.warnings[0]


def test_dkim_key_size_without_cryptography_is_could_not_tell(monkeypatch):
    """No guessed 2048: a 1024-bit key must not pass because the library to read it is missing."""
    monkeypatch.setitem(sys.modules, "cryptography.hazmat.primitives.serialization", None)
    weak = dkim_txt(1024)
    r = dkim.check(zone(**{"lab2026._domainkey.example.test": [("TXT", weak)]}), "example.test", "lab2026")
    assert r.status == "error" and "could not tell" in r.message and "python3-cryptography" in r.message


@pytest.mark.parametrize(
    ("record", "words"),
    [
        ("v=DMARC1; p=maybe", "p=maybe is not none"),
        ("v=DMARC1 p=none", "a ';' is missing"),
        ("p=none; v=DMARC1", "does not start with v=DMARC1"),
        ("v=DMARC1; p=none; pct=150", "pct=150"),
        ("v=DMARC1; p=none; rua=dmarc@example.test", "not mailto:"),
        ("v=DMARC1; p=none; adkim=x", "adkim=x"),
        ("v=DMARC1; rua=mailto:d@example.test", "p= must follow"),
    ],
)
def test_dmarc_syntax_errors(record, words):
    z = zone(**{"_dmarc.example.test": [("TXT", record)]})
    r = dmarc.check(z, "example.test")
    assert r.status == "fail" and words in r.message, r.message
    assert r.fix.startswith("publish TXT at _dmarc.example.test")


def test_dmarc_alignment_and_policy():
    r = dmarc.check(
        zone(), "example.test", return_path_domain="bounce.example.test", dkim_domain="example.test"
    )
    assert r.status == "pass", r.message
    assert r.details["spf_aligned"] and r.details["dkim_aligned"]
    strict = zone(
        **{"_dmarc.example.test": [("TXT", "v=DMARC1; p=reject; aspf=s; rua=mailto:d@example.test")]}
    )
    r = dmarc.check(
        strict, "example.test", return_path_domain="bounce.example.test", dkim_domain="example.test"
    )
    assert r.status == "warn" and "DKIM alone" in r.warnings[0]
    r = dmarc.check(strict, "example.test", return_path_domain="bounce.other.test", dkim_domain="other.test")
    assert r.status == "fail" and "DMARC fails" in r.message
    r = dmarc.check(zone(), "example.test", min_policy="quarantine")
    assert r.status == "fail" and "weaker than the required quarantine" in r.message


@pytest.mark.parametrize(
    ("a", "b", "is_aligned"),
    [
        ("bounce.other-company.co.uk", "example.co.uk", False),  # co.uk is a public suffix
        ("bounce.example.co.uk", "example.co.uk", True),
        ("alice.github.io", "bob.github.io", False),  # the list's private part counts too
        ("bounce.example.test", "example.test", True),  # no rule: the last label is the suffix
        ("other.test", "example.test", False),
    ],
)
def test_dmarc_relaxed_alignment_uses_the_public_suffix_list(a, b, is_aligned):
    assert dmarc.aligned(a, b, "r") is is_aligned
    assert dmarc.aligned(f"{a}.", b.upper(), "r") is is_aligned  # absolute and upper-case names too


def test_dmarc_missing_and_org_fallback():
    z = zone(**{"_dmarc.example.test": None})
    r = dmarc.check(z, "example.test")
    assert r.status == "fail" and "no DMARC record" in r.message
    r = dmarc.check(zone(), "news.example.test")
    assert r.status == "pass" and r.details["name"] == "_dmarc.example.test"
