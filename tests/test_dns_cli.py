"""`bulkrelay dns ...` against a loopback DNS server: exit codes, output, usage errors."""

import json

from bulkrelay import cli
from bulkrelay.dns import cli as dns_cli

DNS_TABLE = {
    ("example.test.", "TXT"): '"v=spf1 ip4:198.51.100.25 -all"',
    ("relay.example.test.", "MX"): "10 mail.example.test.",
    ("mail.example.test.", "A"): "198.51.100.54",
    ("broken.example.test.", "TXT"): "servfail",
}


def test_dns_command_is_registered():
    assert cli.COMMANDS["dns"] == "bulkrelay.dns.cli"


def test_spf_pass_and_fail(ns, capsys):
    assert cli.main(["dns", "spf", "example.test", "198.51.100.25", "-n", ns, "-t", "2"]) == 0
    assert "spf example.test: PASS" in capsys.readouterr().out
    assert cli.main(["dns", "spf", "example.test", "198.51.100.26", "-n", ns, "-t", "2"]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "Fix: set the SPF TXT of example.test" in out


def test_mx_json_and_could_not_tell(ns, capsys):
    code = cli.main(["dns", "mx", "relay.example.test", "--expect", "mail.example.test", "-n", ns, "--json"])
    assert code == 0
    assert json.loads(capsys.readouterr().out)["details"]["mx"][0]["exchange"] == "mail.example.test"
    assert cli.main(["dns", "spf", "broken.example.test", "198.51.100.25", "-n", ns, "-t", "1"]) == 3


def test_usage_errors_are_one_line(ns, capsys):
    assert cli.main(["dns", "mx", "example.test", "-n", "ns1.example.test"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bulkrelay dns: nameserver 'ns1.example.test' is not an IP address")
    assert "Traceback" not in err
    assert cli.main(["dns", "fcrdns", "not-an-ip", "-n", ns]) == 2
    assert "does not appear to be an IPv4 or IPv6 address" in capsys.readouterr().err


def test_exit_map_covers_every_status():
    assert set(dns_cli.EXIT) == {"pass", "warn", "fail", "error"}
