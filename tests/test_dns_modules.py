"""The library/ modules run by ansible against a real UDP DNS server on loopback.

Each module: a pass, a failure with its fix message, the same in check mode, and
`changed` is always false.
"""

import pytest
from conftest import run_module

REV = "25.100.51.198.in-addr.arpa."
DNS_TABLE = {
    ("example.test.", "TXT"): '"v=spf1 ip4:198.51.100.25 mx ~all"',
    ("nospf.example.test.", "TXT"): '"v=spf1 mx ~all"',
    ("relay.example.test.", "A"): "198.51.100.25",
    ("relay.example.test.", "MX"): "10 mail.example.test.",
    ("mail.example.test.", "A"): "198.51.100.80",
    (REV, "PTR"): "relay.example.test.",
    (
        "lab._domainkey.example.test.",
        "TXT",
    ): '"v=DKIM1; k=ed25519; p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="',
    ("_dmarc.example.test.", "TXT"): '"v=DMARC1; p=none; rua=mailto:d@example.test"',
    ("_dmarc.bad.test.", "TXT"): '"v=DMARC1; p=sometimes"',
    ("_smtp._tls.example.test.", "TXT"): '"v=TLSRPTv1; rua=mailto:tlsrpt@example.test"',
}


CASES = [
    ("bulkrelay_spf", {"domain": "example.test", "ip": "198.51.100.25"}, None),
    ("bulkrelay_spf", {"domain": "nospf.example.test", "ip": "198.51.100.25"}, "ip4:198.51.100.25 mx ~all"),
    ("bulkrelay_fcrdns", {"ip": "198.51.100.25", "expected_name": "relay.example.test"}, None),
    ("bulkrelay_fcrdns", {"ip": "198.51.100.25", "expected_name": "other.example.test"}, "set its PTR"),
    ("bulkrelay_mx", {"name": "relay.example.test", "expected": ["mail.example.test"]}, None),
    ("bulkrelay_mx", {"name": "mail.example.test"}, "publish mail.example.test. MX 10"),
    ("bulkrelay_dkim", {"domain": "example.test", "selector": "lab"}, None),
    (
        "bulkrelay_dkim",
        {"domain": "example.test", "selector": "lab", "expected": "p=AAAA"},
        "not the relay's key",
    ),
    ("bulkrelay_dmarc", {"domain": "example.test", "return_path_domain": "bounce.example.test"}, None),
    ("bulkrelay_dmarc", {"domain": "bad.test"}, "p=sometimes is not none"),
    ("bulkrelay_tlsrpt", {"domain": "example.test", "rua": ["mailto:tlsrpt@{domain}"]}, None),
    (
        "bulkrelay_tlsrpt",
        {"domain": "bad.test", "rua": ["mailto:tlsrpt@{domain}"]},
        'publish TXT at _smtp._tls.bad.test: "v=TLSRPTv1; rua=mailto:tlsrpt@bad.test"',
    ),
]


@pytest.mark.parametrize("check_mode", [False, True], ids=["run", "check"])
@pytest.mark.parametrize(("module", "args", "failure"), CASES)
def test_module(ns, module, args, failure, check_mode):
    result = run_module(module, {**args, "nameservers": [ns], "timeout": 2}, check=check_mode)
    assert result["changed"] is False
    if failure is None:
        assert not result.get("failed"), result.get("msg")
        assert result["status"] in ("pass", "warn")
    else:
        assert result["failed"] is True
        assert failure in result["msg"], result["msg"]
        assert result["status"] == "fail"


@pytest.mark.parametrize(
    ("module", "args"),
    [
        ("bulkrelay_mx", {"name": "example.test"}),
        ("bulkrelay_posture", {"fqdn": "relay.example.test", "raw": {}, "now": 0}),
    ],
)
def test_bad_nameserver_is_a_clear_message(module, args):
    result = run_module(module, {**args, "nameservers": ["ns1.example.test"]})
    assert result["failed"] is True
    assert "not an IP address" in result["msg"] and "Traceback" not in result["msg"], result
    assert "Traceback" not in result.get("module_stderr", ""), result
