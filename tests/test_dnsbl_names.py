"""Query names: reversed octets, IPv6 nibbles, domains; nameserver errors."""

import pytest

from bulkrelay.dns import resolver
from bulkrelay.dnsbl.names import (
    InputError,
    parse_nameserver,
    parse_target,
    query_name,
    reverse_ipv4,
    reverse_ipv6,
)


def test_ipv4_reversed_octets():
    assert reverse_ipv4("192.0.2.99") == "99.2.0.192"
    assert query_name(parse_target("198.51.100.25"), "zen.spamhaus.org") == "25.100.51.198.zen.spamhaus.org."


def test_ipv6_nibbles_rfc5782_example():
    # RFC 5782 section 2.4: 2001:db8:1:2:3:4:567:89ab
    expected = "b.a.9.8.7.6.5.0.4.0.0.0.3.0.0.0.2.0.0.0.1.0.0.0.8.b.d.0.1.0.0.2"
    assert reverse_ipv6("2001:db8:1:2:3:4:567:89ab") == expected
    name = query_name(parse_target("2001:DB8:1:2:3:4:567:89AB"), "bl.example.")
    assert name == expected + ".bl.example."
    assert len(reverse_ipv6("::1").split(".")) == 32


def test_domain_query_is_absolute_and_lowercase():
    assert query_name(parse_target("Example.COM."), "DBL.spamhaus.org") == "example.com.dbl.spamhaus.org."


@pytest.mark.parametrize("bad", ["", "not an ip", "localhost", "a..b", "10.0.0.0/8"])
def test_bad_targets_name_the_fix(bad):
    with pytest.raises(InputError, match="neither an IP address nor a domain"):
        parse_target(bad)


def test_nameserver_is_parsed_by_the_resolver():
    # the forms are tested with the one parser in test_dns_resolver; here the DNSBL's error type
    assert parse_nameserver("[2001:db8::53]:5353") == resolver.parse_nameserver("[2001:db8::53]:5353")


@pytest.mark.parametrize("bad", ["ns1.example.com", "198.51.100.60:0", "198.51.100.60:99999", "[2001:db8::1"])
def test_bad_nameservers(bad):
    with pytest.raises(InputError):
        parse_nameserver(bad)
