"""Unit tests of the relay roles' filter plugins (the pure logic behind their validation)."""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load(role: str, name: str):
    path = ROOT / "roles" / role / "filter_plugins" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


fw = _load("relay_firewall", "relay_firewall_net")
pf = _load("relay_postfix", "relay_postfix_checks")


@pytest.mark.parametrize(
    "value",
    ["203.0.113.192/26", "2001:db8:113::/64", "198.51.100.1/32", "198.51.100.7", "10.1.2.3/8"],
)
def test_valid_networks_are_not_reported(value):
    assert fw.relay_firewall_bad_cidrs([value]) == []
    assert pf.relay_postfix_bad_cidrs([value]) == []


@pytest.mark.parametrize(
    "value", ["not-a-cidr", "203.0.113.300/26", "203.0.113.0/33", "apps.example.com", "", " ", None, 42]
)
def test_invalid_networks_are_reported(value):
    assert fw.relay_firewall_bad_cidrs(["203.0.113.0/24", value]) == [value]
    assert pf.relay_postfix_bad_cidrs(["203.0.113.0/24", value]) == [value]


def test_networks_split_by_family_canonical_and_deduplicated():
    nets = ["203.0.113.200/26", "2001:DB8:113::/64", "203.0.113.192/26", "bogus", "198.51.100.1"]
    assert fw.relay_firewall_networks(nets, 4) == ["203.0.113.192/26", "198.51.100.1/32"]
    assert fw.relay_firewall_networks(nets, 6) == ["2001:db8:113::/64"]


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("198.51.100.1", True),
        ("198.51.100.2", False),
        ("2001:db8:113::5", True),
        ("::ffff:198.51.100.1", True),
        ("fe80::1%eth0", False),
        ("garbage", False),
    ],
)
def test_controller_address_in_admin_networks(address, expected):
    assert (
        fw.relay_firewall_ip_in_networks(address, ["198.51.100.1/32", "2001:db8:113::/64", "x"]) is expected
    )


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("192.0.2.10 51234 198.51.100.20 22", "192.0.2.10"),
        ("2001:db8::9 40000 2001:db8::1 22", "2001:db8::9"),
        ("", ""),
        ("192.0.2.10 51234", ""),
        ("nonsense a b c", ""),
    ],
)
def test_ssh_client_address(value, expected):
    assert fw.relay_firewall_ssh_client(value) == expected


@pytest.mark.parametrize("name", ["relay.example.test", "mx-1.mail.example.com", "r1.example.de"])
def test_fqdn_accepted(name):
    assert pf.relay_postfix_is_fqdn(name)


@pytest.mark.parametrize(
    "name",
    [
        "relay",
        "relay.example.test.",
        "Relay.Example.Test",
        "-relay.example.test",
        "relay..example.test",
        "relay.example.123",
        " relay.example.test",
        "",
        None,
        "a" * 64 + ".example.test",
    ],
)
def test_fqdn_rejected(name):
    assert not pf.relay_postfix_is_fqdn(name)


def test_cidr_and_listen_forms():
    assert pf.relay_postfix_cidr("203.0.113.200/26") == "203.0.113.192/26"
    assert pf.relay_postfix_cidr("2001:db8:113::1/64") == "2001:db8:113::/64"
    assert pf.relay_postfix_listen("198.51.100.20") == "198.51.100.20"
    assert pf.relay_postfix_listen("2001:db8:100::3") == "[2001:db8:100::3]"


def test_durations():
    assert pf.relay_postfix_bad_durations(["2d", "12h", "3600", "1w"]) == []
    assert pf.relay_postfix_bad_durations(["2 days", "1y", ""]) == ["2 days", "1y", ""]


dk = _load("relay_dkim", "relay_dkim_keys")

PEM = "-----BEGIN PUBLIC KEY-----\nMIIBIjANBgkq\nhkiG9w0BAQEF\n-----END PUBLIC KEY-----\n"


def test_dkim_txt_from_pem():
    assert dk.relay_dkim_txt(PEM) == "v=DKIM1; k=rsa; p=MIIBIjANBgkqhkiG9w0BAQEF"


def test_dkim_txt_without_key_is_an_error():
    with pytest.raises(ValueError, match="no public key"):
        dk.relay_dkim_txt("unable to load key\n")


def test_dkim_records_and_contract_fact():
    results = [
        {"item": ["example.test", "lab2026"], "rc": 0, "stdout": PEM},
        {"item": ["example.test", "lab2027"], "rc": 0, "stdout": PEM},
        {"item": ["other.test", "lab2026"], "rc": 1, "stdout": ""},  # check mode, key not there yet
        {"item": ["skip.test", "lab2026"], "skipped": True},
    ]
    records = dk.relay_dkim_records(results, "lab2026")
    assert [(r["domain"], r["selector"], r["signing"]) for r in records] == [
        ("example.test", "lab2026", True),
        ("example.test", "lab2027", False),
    ]
    assert records[1]["name"] == "lab2027._domainkey.example.test"
    assert dk.relay_dkim_public_keys(records) == {
        "example.test": {"selector": "lab2026", "txt": "v=DKIM1; k=rsa; p=MIIBIjANBgkqhkiG9w0BAQEF"}
    }


def test_rotation_records_to_publish_and_remove():
    records = dk.relay_dkim_records([{"item": ["example.test", "bulk1"], "rc": 0, "stdout": PEM}], "lab2026")
    assert dk.relay_dkim_rrsets(records, 300) == [
        {
            "fqdn": "bulk1._domainkey.example.test.",
            "type": "TXT",
            "ttl": 300,
            "rdata": ['"v=DKIM1; k=rsa; p=MIIBIjANBgkqhkiG9w0BAQEF"'],
        }
    ]
    assert dk.relay_dkim_rrsets_absent(["example.test", "b.test"], "lab2026") == [
        {"fqdn": "lab2026._domainkey.example.test.", "type": "TXT", "ttl": 0, "rdata": [], "state": "absent"},
        {"fqdn": "lab2026._domainkey.b.test.", "type": "TXT", "ttl": 0, "rdata": [], "state": "absent"},
    ]
    assert dk.relay_dkim_rrsets_absent([], "lab2026") == []


def test_rotation_filter_names_the_state_file_on_a_broken_state():
    from ansible.errors import AnsibleFilterError  # noqa: PLC0415 - only this test needs Ansible

    plan = dk.relay_dkim_rotation({}, "lab2026", 1_764_500_000, 7, "bulk")
    assert plan["step"] == "start" and plan["after_start"]["next"] == "bulk20251130"
    with pytest.raises(AnsibleFilterError, match=r"fix or remove /etc/ansible/facts\.d/bulkrelay_dkim\.fact"):
        dk.relay_dkim_rotation({"active": "a", "next": "b", "previous": "c"}, "a", 0, 7, "bulk")


def test_parse_passwd_file():
    text = "# managed by bulkrelay\n\napp1:{SHA512-CRYPT}$6$abc$def\napp2:{PLAIN}x::::\nbroken\n"
    assert pf.relay_postfix_parse_passwd(text) == {"app1": "{SHA512-CRYPT}$6$abc$def", "app2": "{PLAIN}x"}
    assert pf.relay_postfix_parse_passwd("") == {}


def test_sasl_hashes_keep_confirmed_replace_changed_and_take_supplied():
    users = [
        {"name": "kept", "password": "a"},
        {"name": "changed", "password": "b"},
        {"name": "new", "password": "c"},
        {"name": "given", "password_hash": "{SHA512-CRYPT}$6$given"},
    ]
    current = {"kept": "H-kept", "changed": "H-old", "gone": "H-gone"}
    checks = [
        {"item": users[0], "rc": 0},
        {"item": users[1], "rc": 1},
        {"item": users[2], "skipped": True},
    ]
    fresh = [
        {"item": checks[0], "skipped": True},
        {"item": checks[1], "stdout": "H-changed\n"},
        {"item": checks[2], "stdout": "H-new\n"},
    ]
    assert pf.relay_postfix_sasl_hashes(users, current, checks, fresh) == {
        "kept": "H-kept",
        "changed": "H-changed",
        "new": "H-new",
        "given": "{SHA512-CRYPT}$6$given",
    }
