"""List settings: return-code sets, defaults, validation with messages that name the fix."""

import pytest

from bulkrelay.dnsbl.lists import CodeSet, DnsblList, InputError, Settings, default_lists


def test_codeset_forms():
    codes = CodeSet.parse(["127.0.0.2", "127.0.0.10-127.0.0.14", "127.0.1.0/24"], "t")
    assert "127.0.0.2" in codes and "127.0.0.12" in codes and "127.0.1.200" in codes
    assert "127.0.0.3" not in codes and "127.0.0.15" not in codes and "bogus" not in codes


def test_codeset_rejects_garbage():
    with pytest.raises(InputError, match="return code 'listed'"):
        CodeSet.parse(["listed"], "DNSBL list x")
    with pytest.raises(InputError, match="backwards"):
        CodeSet.parse(["127.0.0.9-127.0.0.2"], "DNSBL list x")


def test_defaults_are_current_and_valid():
    lists = default_lists()
    zones = {item.label for item in lists}
    assert "zen.spamhaus.org" in zones and "dbl.spamhaus.org" in zones
    assert not any("sorbs" in z or "ahbl" in z or "njabl" in z for z in zones)
    zen = next(item for item in lists if item.label == "zen.spamhaus.org")
    assert "127.255.255.254" in zen.errors and "127.255.255.254" not in zen.listed
    assert zen.dqs_zone == "zen.dq.spamhaus.net."
    allowlists = [item.label for item in lists if item.allowlist]
    assert allowlists == ["list.dnswl.org"]


@pytest.mark.parametrize("zone", ["dnsbl.sorbs.net", "dnsbl.ahbl.org", "combined.njabl.org"])
def test_shut_down_lists_refused_with_reason(zone):
    with pytest.raises(InputError, match="shut down"):
        DnsblList.from_mapping({"zone": zone})


def test_unknown_keys_and_bad_kind():
    with pytest.raises(InputError, match=r"unknown setting.*lsited"):
        DnsblList.from_mapping({"zone": "bl.test", "lsited": ["127.0.0.2"]})
    with pytest.raises(InputError, match="kind must be 'ip' or 'domain'"):
        DnsblList.from_mapping({"zone": "bl.test", "kind": "ipv4"})
    with pytest.raises(InputError, match="unknown DNSBL setting"):
        Settings.from_mapping({"timout": 3})


def test_extra_and_disabled_lists_adjust_the_defaults():
    cfg = Settings.from_mapping(
        {"extra_lists": [{"zone": "bl.lab.test"}], "disabled_lists": ["bl.spamcop.net", "psbl.surriel.com."]}
    )
    zones = [item.label for item in cfg.lists]
    assert "bl.lab.test" in zones and "bl.spamcop.net" not in zones and "psbl.surriel.com" not in zones
    assert "zen.spamhaus.org" in zones


def test_duplicate_and_empty_rejected():
    with pytest.raises(InputError, match="configured twice"):
        Settings.from_mapping({"lists": [{"zone": "a.test"}, {"zone": "A.test."}]})
    with pytest.raises(InputError, match="no DNSBL list left"):
        Settings.from_mapping({"lists": [{"zone": "a.test"}], "disabled_lists": ["a.test"]})


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"timeout": 0}, "timeout must be"),
        ({"timeout": "4"}, "timeout must be"),
        ({"retries": 9}, "retries must be"),
        ({"dqs_key": "has spaces"}, "dqs_key"),
        ({"nameservers": ["resolver.example"]}, "not an IP address"),
        ({"lists": "zen.spamhaus.org"}, "lists must be a list"),
    ],
)
def test_settings_validation(data, match):
    with pytest.raises(InputError, match=match):
        Settings.from_mapping(data)


def test_dqs_zone_only_with_key():
    zen = DnsblList.from_mapping({"zone": "zen.spamhaus.org", "dqs_zone": "zen.dq.spamhaus.net"})
    assert zen.query_zone("") == "zen.spamhaus.org."
    assert zen.query_zone("k3y") == "k3y.zen.dq.spamhaus.net."


def test_underscore_keys_are_comments():
    cfg = Settings.from_mapping({"_comment": "managed by bulkrelay", "lists": [{"zone": "bl.test"}]})
    assert [item.label for item in cfg.lists] == ["bl.test"]


@pytest.mark.parametrize(
    ("entry", "match"),
    [
        # The old hand-made workaround for IPv6-only lists names the new keys in its error.
        ({"ipv6": True, "test_listed": "::ffff:7f00:2"}, r"IPv6 test points go in test_listed6.*ipv4: false"),
        ({"test_clean": "bogus"}, "test_clean must be an IPv4 address"),
        ({"ipv4": False}, "serves neither IPv4 nor IPv6"),
        ({"ipv6": True, "test_listed6": "127.0.0.2"}, "test_listed6 must be an IPv6 address"),
        ({"test_clean6": "::ffff:7f00:1"}, "add ipv6: true"),
        ({"kind": "domain", "ipv6": True}, "apply to IP lists only"),
        ({"ipv4": "no", "ipv6": True}, "ipv4 must be true or false"),
    ],
)
def test_family_and_test_point_settings_name_the_fix(entry, match):
    with pytest.raises(InputError, match=match):
        DnsblList.from_mapping({"zone": "bl.test", **entry})


def test_test_points_per_family():
    dual = DnsblList.from_mapping({"zone": "bl.test", "ipv6": True, "test_listed6": "2001:DB8::2"})
    assert dual.test_points(4) == ("127.0.0.2", "127.0.0.1")
    assert dual.test_points(6) == ("2001:db8::2", "::ffff:7f00:1")
    v6only = DnsblList.from_mapping({"zone": "bl.test", "ipv4": False, "ipv6": True})
    assert not v6only.applies_to("ip", 4) and v6only.applies_to("ip", 6)
    assert v6only.test_points(6) == ("::ffff:7f00:2", "::ffff:7f00:1")
    assert DnsblList.from_mapping({"zone": "bl.test", "kind": "domain"}).test_points() == ("test", "invalid")


def test_defaults_name_their_own_test_points_and_codes():
    lists = {item.label: item for item in default_lists()}
    for item in lists.values():
        if item.selftest:  # written out, not left to a fallback a reader has to know
            assert item.test_listed and item.test_clean, item.label
            assert not item.ipv6 or (item.test_listed6 and item.test_clean6), item.label
    zen, dbl, mailspike = lists["zen.spamhaus.org"], lists["dbl.spamhaus.org"], lists["bl.mailspike.net"]
    assert zen.ipv6 and zen.test_points(6) == ("::ffff:7f00:2", "::ffff:7f00:1")
    assert "127.0.0.30" in zen.listed and "127.0.0.12" not in zen.listed
    # Spamhaus: 127.0.1.255 answers an IP query sent to the domain list - an error, not a listing.
    assert (
        "127.0.1.255" in dbl.errors and "127.0.1.255" not in dbl.listed and dbl.test_listed == "dbltest.com"
    )
    assert "127.0.1.3" not in dbl.listed and "127.0.1.106" in dbl.listed
    # bl.mailspike.net carries the reputation levels L5-L3 only.
    assert "127.0.0.12" in mailspike.listed and "127.0.0.13" not in mailspike.listed
    # Lists that do not document IPv6 queries are not asked about IPv6 addresses.
    assert [label for label, item in lists.items() if item.ipv6] == ["zen.spamhaus.org", "list.dnswl.org"]
