"""The checker against a table-driven DNS: verdicts per return code, self-tests, allowlists,
deadline, DQS. No network."""

import asyncio
import time

import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest
from conftest import FakeDns

from bulkrelay.dnsbl.checker import Checker, judge
from bulkrelay.dnsbl.lists import DnsblList, Settings
from bulkrelay.dnsbl.lookup import Answer, Lookup
from bulkrelay.dnsbl.names import parse_nameserver, reverse_ipv6

RELAY = "198.51.100.25"
RELAY_REV = "25.100.51.198"


def zone_answers(zone, relay=None, test_listed=("127.0.0.2",), test_clean=None, txt=None):
    """A well-behaved list: RFC 5782 test points plus an optional answer for the relay."""
    answers = {f"2.0.0.127.{zone}.": {"A": list(test_listed)}}
    if test_clean is not None:
        answers[f"1.0.0.127.{zone}."] = test_clean
    if relay is not None:
        answers[f"{RELAY_REV}.{zone}."] = {"A": list(relay), "TXT": [txt] if txt else []}
    return answers


def settings(*lists, **kw):
    return Settings.from_mapping({"lists": list(lists), "nameservers": ["192.0.2.53"], **kw})


def verdicts(result):
    return [(r.target, r.zone, r.outcome, r.codes, r.error, r.reason, r.allowlist) for r in result.results]


@pytest.fixture(params=["uncached", "selftest-cache"])
def run(request, tmp_path):
    """Every scenario of this file runs twice: as it is, and through the self-test cache (one
    run fills the file, the next answers from it), whose verdicts - outcome, codes, error text,
    reason - must be exactly those of the uncached run (issue 16)."""

    def check(fake, cfg, targets=(RELAY,)):
        uncached = Checker(cfg, transport=fake).run(list(targets))
        if request.param == "uncached":
            return uncached
        cache = tmp_path / "selftest.json"
        filling = Checker(cfg, transport=fake, selftest_cache=cache).run(list(targets))
        cached = Checker(cfg, transport=fake, selftest_cache=cache).run(list(targets))
        assert verdicts(filling) == verdicts(uncached) == verdicts(cached)
        return cached

    return check


def test_listed_with_reason(run):
    fake = FakeDns(zone_answers("bl.test", relay=["127.0.0.2"], txt="Listed: spam trap hits"))
    result = run(fake, settings({"zone": "bl.test"}))
    (hit,) = result.listings
    assert (hit.target, hit.zone, hit.codes, hit.reason) == (
        RELAY,
        "bl.test",
        ("127.0.0.2",),
        "Listed: spam trap hits",
    )
    assert not result.errors
    assert (f"{RELAY_REV}.bl.test.", "TXT", "192.0.2.53") in fake.asked


def test_nxdomain_is_clean(run):
    result = run(FakeDns(zone_answers("bl.test")), settings({"zone": "bl.test"}))
    assert [r.outcome for r in result.results] == ["clean"]
    assert result.checked == 1


@pytest.mark.parametrize(
    ("code", "meaning"),
    [
        ("127.255.255.252", "typo"),
        ("127.255.255.254", "public/open resolver"),
        ("127.255.255.255", "rate limited"),
    ],
)
def test_spamhaus_error_codes_are_errors_not_listings(code, meaning, run):
    zen = {"zone": "zen.test", "listed": ["127.0.0.2-127.0.0.11"], "errors": ["127.255.255.0/24"]}
    fake = FakeDns(zone_answers("zen.test", relay=[code]))
    result = run(fake, settings(zen))
    assert not result.listings
    (err,) = result.errors
    assert code in err.error and meaning in err.error


def test_undefined_code_is_an_error(run):
    fake = FakeDns(zone_answers("bl.test", relay=["127.0.0.99"]))
    result = run(fake, settings({"zone": "bl.test", "listed": ["127.0.0.2"]}))
    assert not result.listings
    assert "does not define as a listing" in result.errors[0].error


def test_answer_outside_127_is_an_error_by_default(run):
    fake = FakeDns(zone_answers("bl.test", relay=["198.51.100.200"]))
    result = run(fake, settings({"zone": "bl.test"}))
    assert result.errors and not result.listings


def test_dead_list_that_answers_everything_is_unknown_not_listed(run):
    dead = {"A": ["127.0.0.2"]}
    fake = FakeDns(
        {"2.0.0.127.dead.test.": dead, "1.0.0.127.dead.test.": dead, f"{RELAY_REV}.dead.test.": dead}
    )
    result = run(fake, settings({"zone": "dead.test"}))
    assert not result.listings
    assert "dead list" in result.errors[0].error and "127.0.0.1" in result.errors[0].error


def test_shut_down_list_fails_selftest(run):
    fake = FakeDns({})  # everything NXDOMAIN: 127.0.0.2 is not listed any more
    result = run(fake, settings({"zone": "gone.test"}))
    assert result.errors and "not listed" in result.errors[0].error and not result.checked


def test_refused_resolver_on_selftest_is_an_error_for_every_target(run):
    refused = {"A": ["127.255.255.254"]}
    fake = FakeDns({"2.0.0.127.zen.test.": refused, f"{RELAY_REV}.zen.test.": "NXDOMAIN"})
    result = run(fake, settings({"zone": "zen.test"}))
    assert result.errors and "127.255.255.254" in result.errors[0].error
    assert result.checked == 0  # the NXDOMAIN for the relay is not trusted: never reported clean


@pytest.mark.parametrize("rcode", ["SERVFAIL", "REFUSED"])
def test_servfail_and_refused_are_errors(rcode, run):
    answers = zone_answers("bl.test")
    answers[f"{RELAY_REV}.bl.test."] = rcode
    result = run(FakeDns(answers), settings({"zone": "bl.test"}, retries=0))
    assert result.errors and rcode in result.errors[0].error


def test_timeouts_are_bounded_by_one_timeout_plus_margin(run):
    answers = {}
    lists = []
    for i in range(8):
        zone = f"slow{i}.test"
        answers[f"2.0.0.127.{zone}."] = "TIMEOUT"
        answers[f"1.0.0.127.{zone}."] = "TIMEOUT"
        answers[f"{RELAY_REV}.{zone}."] = "TIMEOUT"
        lists.append({"zone": zone})
    answers.update(zone_answers("bl.test", relay=["127.0.0.2"]))
    lists.append({"zone": "bl.test"})
    result = run(FakeDns(answers), settings(*lists, timeout=0.4, retries=1))
    elapsed = result.elapsed
    # One after another, eight silent lists would take 8 x 0.4 s at the least; the bound
    # proves they are asked together and leaves a loaded machine room.
    assert elapsed < 0.4 * 5
    assert len(result.error_zones()) == 8
    assert all("timeout" in e.error for e in result.errors)
    assert [r.zone for r in result.listings] == ["bl.test"]


def test_allowlist_reported_apart_never_a_listing(run):
    wl = {"zone": "wl.test", "allowlist": True, "listed": ["127.0.0.0-127.0.255.254"], "selftest": False}
    fake = FakeDns({f"{RELAY_REV}.wl.test.": {"A": ["127.0.10.2"]}})
    result = run(fake, settings(wl))
    assert not result.listings
    assert [r.zone for r in result.allowlisted] == ["wl.test"]


def test_allowlist_error_does_not_make_the_check_fail(run):
    wl = {"zone": "wl.test", "allowlist": True, "selftest": False}
    fake = FakeDns({f"{RELAY_REV}.wl.test.": "SERVFAIL"})
    result = run(fake, settings(wl, retries=0))
    assert not result.errors and result.allowlist_errors


def test_ipv6_only_asked_where_supported_and_by_nibbles(run):
    v6 = "2001:db8:100::25"
    nibbles = "5.2.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.1.0.8.b.d.0.1.0.0.2"
    answers = v6_answers("v6.test") | zone_answers("v4only.test")  # IPv6 targets: IPv6 self-test
    answers[f"{nibbles}.v6.test."] = {"A": ["127.0.0.2"]}
    fake = FakeDns(answers)
    result = run(fake, settings({"zone": "v6.test", "ipv6": True}, {"zone": "v4only.test"}), targets=[v6])
    assert [(r.target, r.zone) for r in result.listings] == [(v6, "v6.test")]
    assert result.lists == ["v6.test"]
    assert not any(name.endswith("v4only.test.") for name, _t, _s in fake.asked)


RELAY6 = "2001:db8:100::25"


def v6_answers(zone, listed=(), dead=False):
    """A list's IPv6 side: the RFC 5782 section 5 points (::ffff:7f00:2 listed, ::ffff:7f00:1 only
    when `dead`) plus the IPv6 addresses in `listed`."""
    answers = {f"{reverse_ipv6('::ffff:7f00:2')}.{zone}.": {"A": ["127.0.0.2"]}}
    if dead:
        answers[f"{reverse_ipv6('::ffff:7f00:1')}.{zone}."] = {"A": ["127.0.0.2"]}
    for address in listed:
        answers[f"{reverse_ipv6(address)}.{zone}."] = {"A": ["127.0.0.2"], "TXT": ["IPv6 listing"]}
    return answers


def test_ipv6_only_list_self_tests_with_ipv6_points_and_reports_listings(run):
    """Issue 19 point 1: a list that serves only IPv6 answers none of the IPv4 test points; it
    must still report a listed IPv6 address (CRITICAL) and an unlisted one as clean (OK)."""
    fake = FakeDns(v6_answers("v6only.test", listed=[RELAY6]))
    v6only = {"zone": "v6only.test", "ipv4": False, "ipv6": True, "listed": ["127.0.0.2"]}
    result = run(fake, settings(v6only), targets=[RELAY6, "2001:db8:100::26", RELAY])
    assert not result.errors, result.errors
    assert [(r.target, r.reason) for r in result.listings] == [(RELAY6, "IPv6 listing")]
    assert [r.target for r in result.results if r.outcome == "clean"] == ["2001:db8:100::26"]
    # Its IPv4 side is neither self-tested nor asked about the relay's IPv4 address.
    assert not any(".0.0.127." in name or RELAY_REV in name for name, _t, _s in fake.asked)


def test_dual_list_judges_each_family_by_its_own_self_test(run):
    """ipv6: true alone (the existing key) now self-tests the IPv6 side with the IPv6 points: an
    IPv6 answer is trusted when they pass even if the IPv4 points fail, and the other way round."""
    answers = v6_answers("v6side.test", listed=[RELAY6])  # IPv4 test points: NXDOMAIN
    answers.update(zone_answers("v4side.test", relay=["127.0.0.2"]))  # IPv6 test points: NXDOMAIN
    answers[f"{reverse_ipv6(RELAY6)}.v4side.test."] = {"A": ["127.0.0.2"]}
    lists = ({"zone": "v6side.test", "ipv6": True}, {"zone": "v4side.test", "ipv6": True})
    result = run(FakeDns(answers), settings(*lists), targets=[RELAY, RELAY6])
    assert [(r.target, r.zone) for r in result.listings] == [(RELAY6, "v6side.test"), (RELAY, "v4side.test")]
    errors = {(r.target, r.zone): r.error for r in result.errors}
    assert set(errors) == {(RELAY, "v6side.test"), (RELAY6, "v4side.test")}
    assert "test point 127.0.0.2 is not listed" in errors[(RELAY, "v6side.test")]
    assert "test point ::ffff:7f00:2 is not listed" in errors[(RELAY6, "v4side.test")]


def test_ipv6_dead_list_is_unknown_not_listed(run):
    fake = FakeDns(v6_answers("dead6.test", listed=[RELAY6], dead=True))
    result = run(fake, settings({"zone": "dead6.test", "ipv4": False, "ipv6": True}), targets=[RELAY6])
    assert not result.listings
    assert "dead list" in result.errors[0].error and "::ffff:7f00:1" in result.errors[0].error


def test_own_ipv6_test_points_are_asked(run):
    answers = {f"{reverse_ipv6('2001:db8::2')}.own6.test.": {"A": ["127.0.0.2"]}}
    own = {
        "zone": "own6.test",
        "ipv4": False,
        "ipv6": True,
        "test_listed6": "2001:DB8::2",
        "test_clean6": "2001:db8::1",
    }
    fake = FakeDns(answers)
    result = run(fake, settings(own), targets=[RELAY6])
    assert [r.outcome for r in result.results] == ["clean"]
    assert f"{reverse_ipv6('2001:db8::1')}.own6.test." in {name for name, _t, _s in fake.asked}


def test_domain_list_uses_rfc5782_domain_test_points(run):
    answers = {"test.dbl.test.": {"A": ["127.0.1.2"]}, "spam.example.dbl.test.": {"A": ["127.0.1.2"]}}
    dbl = {"zone": "dbl.test", "kind": "domain", "listed": ["127.0.1.2-127.0.1.255"]}
    result = run(FakeDns(answers), settings(dbl), targets=["spam.example", "ham.example", RELAY])
    assert [r.target for r in result.listings] == ["spam.example"]
    assert [r.target for r in result.results if r.outcome == "clean"] == ["ham.example"]


def test_dqs_key_used_in_queries_but_never_shown(run):
    key = "abcdefghijklmnopqrstuvwxyz"
    zone = f"{key}.zen.dq.test"
    answers = zone_answers(zone, relay=["127.0.0.4"], txt=f"https://check.example/{key}")
    zen = {"zone": "zen.test", "dqs_zone": "zen.dq.test", "listed": ["127.0.0.2-127.0.0.11"]}
    fake = FakeDns(answers)
    result = run(fake, settings(zen, dqs_key=key))
    (hit,) = result.listings
    assert hit.zone == "zen.test"
    assert key not in hit.reason and "<dqs-key>" in hit.reason
    assert all(name.endswith(f".{zone}.") for name, _t, _s in fake.asked)


def test_judge_treats_nodata_as_error():
    dnsbl = DnsblList.from_mapping({"zone": "bl.test"})
    assert judge(dnsbl, Answer("nodata", error="no A record"))[0] == "error"
    assert judge(dnsbl, Answer("nxdomain"))[0] == "clean"
    assert judge(dnsbl, Answer("found", ("127.0.0.3",)))[0] == "listed"


def test_lookup_retries_on_the_next_nameserver_within_the_timeout():
    calls = []

    async def flaky(query, server, timeout):
        calls.append((str(server), round(timeout, 2)))
        if str(server) == "192.0.2.1":
            await asyncio.sleep(3600)  # first resolver silent
        response = dns.message.make_response(query)
        response.answer.append(dns.rrset.from_text(query.question[0].name, 60, "IN", "A", "127.0.0.2"))
        return response

    servers = [parse_nameserver("192.0.2.1"), parse_nameserver("192.0.2.2:5353")]
    lookup = Lookup(servers, timeout=0.4, retries=1, transport=flaky)
    started = time.monotonic()
    answer = asyncio.run(lookup.query("2.0.0.127.bl.test."))
    assert answer.status == "found" and answer.values == ("127.0.0.2",)
    # The two tries share the timeout: the first gets half, the second what is left of its half
    # (a loaded machine leaves slightly less: never more).
    assert [server for server, _ in calls] == ["192.0.2.1", "192.0.2.2:5353"]
    assert calls[0][1] == 0.2 and 0 < calls[1][1] <= 0.2, calls
    # 0.4 s apiece (the timeout given to each server) would make 0.8 s.
    assert time.monotonic() - started < 0.75


def test_lookup_network_error_is_an_error_not_clean():
    async def unreachable(query, server, timeout):
        raise OSError(113, "No route to host")

    lookup = Lookup([parse_nameserver("192.0.2.1")], timeout=0.2, retries=1, transport=unreachable)
    answer = asyncio.run(lookup.query("2.0.0.127.bl.test."))
    assert answer.status == "error" and "No route to host" in answer.error
