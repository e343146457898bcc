"""bulkrelay.names: the one home of the domain, FQDN and CIDR rules.

Each caller's choice of parameters is pinned here with the inputs that tell them apart, so a
change to the shared rule shows which caller it moves.
"""

import pytest

from bulkrelay.names import bad_cidrs, is_domain, is_fqdn, is_label, network

# (name, postfix myhostname, sender.toml domain, suppressed address domain, DNS record name,
#  message address domain) -- the old validators' answers, run through both before they went.
CASES = [
    ("relay.example.test", True, True, True, True, True),
    ("test", False, True, False, False, False),  # a single label: only sender.toml takes it
    ("relay.example.123", False, True, True, True, False),  # numeric top label
    ("relay.example.t1", True, True, True, True, True),
    ("relay.example.1t", False, True, True, True, True),  # top label must start with a letter
    ("_dmarc.example.com", False, False, False, True, False),  # DNS owner names allow "_"
    ("under_score.example.com", False, False, False, True, False),
    ("-relay.example.test", False, False, False, True, False),
    ("relay-.example.test", False, False, False, True, False),
    ("relay..example.test", False, False, False, False, False),
    ("a" * 63 + ".example.test", True, True, True, True, True),
    ("a" * 64 + ".example.test", False, False, False, False, False),
    (".".join(["a" * 62] * 4) + ".abc", False, False, False, True, False),  # 255: only records take it
    (".".join(["a" * 62] * 4) + ".a", True, True, True, True, True),  # 253 long
    ("relay.example.test\n", False, False, False, True, False),  # records strip white space first
    ("a\n.b", False, False, False, True, False),  # records judge label lengths only
]


def _message_ok(domain: str) -> bool:
    labels = domain.split(".")
    return len(labels) >= 2 and all(is_label(lb) for lb in labels) and not labels[-1].isdigit()


@pytest.mark.parametrize(("name", "postfix", "config", "suppression", "records", "message"), CASES)
def test_each_callers_rule(name, postfix, config, suppression, records, message):
    assert is_fqdn(name) is postfix
    assert is_domain(name, min_labels=1) is config
    assert is_domain(name, min_labels=2) is suppression
    assert is_domain(name.strip(), min_labels=2, ldh=False, max_length=None) is records
    assert is_domain(name, tld="not-numeric") is message
    if len(name) <= 253:  # an address is at most 254 characters, so its domain never exceeds 253
        assert _message_ok(name) is message


@pytest.mark.parametrize(
    "name", ["Relay.Example.Test", "relay.example.test.", " relay.example.test", "", None, 7]
)
def test_upper_case_trailing_dot_and_non_strings_are_the_callers_to_normalise(name):
    assert not is_domain(name, min_labels=1)


def test_unknown_tld_rule_is_a_programming_error():
    with pytest.raises(ValueError, match="tld must be one of"):
        is_domain("example.com", tld="alpha")


def test_labels():
    assert is_label("a") and is_label("xn--bcher-kva") and is_label("a" * 63)
    assert not any(is_label(v) for v in ["", "-a", "a-", "A", "a_b", "a" * 64, "a\n"])


@pytest.mark.parametrize("value", ["203.0.113.192/26", "2001:db8:113::/64", "198.51.100.7", " 10.1.2.3/8 "])
def test_networks(value):
    assert network(value) is not None
    assert bad_cidrs([value]) == []


@pytest.mark.parametrize("value", ["not-a-cidr", "203.0.113.0/33", "", " ", None, 42, 3.5])
def test_not_networks(value):
    assert network(value) is None
    assert bad_cidrs(["203.0.113.0/24", value, "::1"]) == [value]
