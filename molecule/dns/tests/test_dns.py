"""The dns scenario, verified: BIND serves the lab zones authoritatively (recursion off), the
dns_records role's output and RFC 2136 apply, and the audit playbook in the good state and in
each broken state (made by a signed dynamic update, undone afterwards)."""

import base64
import json
import os
import re
import subprocess
from pathlib import Path

import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import dns.tsigkeyring
import dns.update
import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

testinfra_hosts = ["br-dns-bind"]

ROOT = Path(__file__).resolve().parents[3]
SCENARIO = ROOT / "molecule" / "dns"
NS = "198.51.100.53"
GROUP_VARS = yaml.safe_load((SCENARIO / "inventory" / "group_vars" / "all.yml").read_text())
KEYRING = dns.tsigkeyring.from_text({GROUP_VARS["lab_tsig_name"]: GROUP_VARS["lab_tsig_secret"]})
RELAY_IP4, RELAY_IP6 = "198.51.100.25", "2001:db8:100::25"


def ask(name, rdtype, server=NS):
    query = dns.message.make_query(name, rdtype)
    return dns.query.udp(query, server, timeout=3)


def rrset_text(name, rdtype):
    answer = ask(name, rdtype).answer
    return sorted(rd.to_text() for rrset in answer for rd in rrset) if answer else []


def replace(zone, name, rdtype, values, ttl=3600):
    """Make name/rdtype exactly `values` ([] = delete) by a TSIG-signed dynamic update."""
    update = dns.update.UpdateMessage(zone, keyring=KEYRING, keyalgorithm="hmac-sha256")
    if values:
        update.replace(name, ttl, rdtype, *values)
    else:
        update.delete(name, rdtype)
    response = dns.query.tcp(update, NS, timeout=5)
    assert response.rcode() == dns.rcode.NOERROR, dns.rcode.to_text(response.rcode())


def ephemeral():
    return Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"])


def run_audit(tmp_path, *extra):
    env = dict(os.environ, BULKRELAY_AUDIT_DIR=str(tmp_path), ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"))
    env["ANSIBLE_LIBRARY"] = str(ROOT / "library")
    env.update(ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0")  # molecule forces colour on
    inventory = Path(os.environ["MOLECULE_INVENTORY_FILE"]).parent
    proc = subprocess.run(
        [
            "ansible-playbook",
            "-i",
            str(inventory),
            "-e",
            "audit__dnsbl=false",
            str(ROOT / "playbooks" / "audit.yml"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        check=False,
    )
    report = json.loads((tmp_path / "audit.json").read_text())
    return proc, report


def failing(report):
    return {(c["check"], c["subject"]): c for c in report["checks"] if c["status"] in ("fail", "error")}


# --- BIND itself -------------------------------------------------------------------------


def test_named_runs_and_refuses_recursion(host):
    assert host.service("named").is_running
    out = host.run("dig +norec @127.0.0.1 www.example.com A").stdout
    assert "status: REFUSED" in out


def test_zones_answer_over_ipv4_and_ipv6():
    assert rrset_text("example.test.", "MX") == ["10 mail.example.test."]
    assert rrset_text("example.test.", "MX") == sorted(
        rd.to_text() for rrset in ask("example.test.", "MX", server="2001:db8:100::53").answer for rd in rrset
    )
    assert rrset_text("25.100.51.198.in-addr.arpa.", "PTR") == ["relay.example.test."]


# --- what dns_records generated and applied -------------------------------------------------


def test_apply_merged_spf_and_kept_other_txt():
    txt = rrset_text("example.test.", "TXT")
    assert f'"v=spf1 ip4:{RELAY_IP4} ip6:{RELAY_IP6} mx ~all"' in txt
    assert '"lab-site-verification=4f1c2"' in txt
    assert len(txt) == 2


def test_apply_published_relay_records():
    assert rrset_text("relay.example.test.", "A") == [RELAY_IP4]
    assert rrset_text("relay.example.test.", "AAAA") == [RELAY_IP6]
    assert rrset_text("relay.example.test.", "MX") == ["10 mail.example.test."]
    assert rrset_text("bounce.example.test.", "MX") == ["10 mail.example.test."]
    dkim = rrset_text("lab2026._domainkey.example.test.", "TXT")
    assert len(dkim) == 1 and dkim[0].count('" "') == 1  # split into two strings
    assert rrset_text("_dmarc.example.test.", "TXT") == [
        '"v=DMARC1; p=none; rua=mailto:dmarc-reports@example.test; adkim=r; aspf=r"'
    ]


def test_generated_files():
    out = ephemeral() / "dns-records" / "relay-dns"
    names = sorted(p.name for p in out.iterdir())
    for group in ("relay", "example.test", "bounce.example.test"):
        for ext in ("zone", "json", "md"):
            assert f"{group}.{ext}" in names
    assert "ptr-request-198.51.100.25.md" in names
    assert "ptr-request-2001_db8_100__25.md" in names
    zone = (out / "example.test.zone").read_text()
    assert zone.startswith("; managed by bulkrelay")
    assert f'example.test.\t3600\tIN\tTXT\t"v=spf1 ip4:{RELAY_IP4} ip6:{RELAY_IP6} mx ~all"' in zone
    data = json.loads((out / "relay.json").read_text())
    mx = next(r for r in data["records"] if r["type"] == "MX")
    assert mx["value"] == "10 mail.example.test." and "accepts no inbound mail" in mx["purpose"]
    note = (out / "ptr-request-198.51.100.25.md").read_text()
    assert "**198.51.100.25** to **relay.example.test**" in note
    assert "dig +short -x 198.51.100.25 @198.51.100.53" in note


# --- the audit, good and broken --------------------------------------------------------------


def test_audit_passes_on_the_good_state(tmp_path):
    proc, report = run_audit(tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert failing(report) == {}
    kinds = {c["check"] for c in report["checks"]}
    assert {"spf", "fcrdns", "mx", "dkim", "dmarc"} <= kinds
    junit = (tmp_path / "audit.junit.xml").read_text()
    assert 'failures="0"' in junit and 'errors="0"' in junit


def other_dkim_key():
    """A valid 2048-bit RSA key that is not the relay's."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return "v=DKIM1; k=rsa; p=" + base64.b64encode(der).decode()


OTHER_KEY = other_dkim_key()


def test_audit_in_check_mode_reports_the_same(tmp_path):
    proc, report = run_audit(tmp_path, "--check")
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert failing(report) == {}
    assert re.search(r"relay-dns\s+: ok=\d+\s+changed=0 ", proc.stdout), proc.stdout[-1500:]


BROKEN = {
    "spf-missing-relay-ip": (
        ("example.test", "example.test.", "TXT", ['"v=spf1 mx ~all"', '"lab-site-verification=4f1c2"']),
        {
            ("spf", f"example.test {RELAY_IP4}"): (
                "gives softfail for 198.51.100.25, expected pass",
                "(adds ip4:",
            ),
            ("spf", f"example.test {RELAY_IP6}"): (
                "gives softfail for 2001:db8:100::25, expected pass",
                "(adds ip6:",
            ),
        },
    ),
    "ptr-mismatch": (
        ("100.51.198.in-addr.arpa", "25.100.51.198.in-addr.arpa.", "PTR", ["host25.provider.test."]),
        {
            ("fcrdns", RELAY_IP4): (
                "PTR of 198.51.100.25 is host25.provider.test, expected relay.example.test",
                "set its PTR (25.100.51.198.in-addr.arpa.) to relay.example.test",
            )
        },
    ),
    "mx-missing": (
        ("example.test", "relay.example.test.", "MX", []),
        {("mx", "relay.example.test"): ("relay.example.test has no MX record", "MX 10 mail.example.test.")},
    ),
    "dkim-key-mismatch": (
        (
            "example.test",
            "lab2026._domainkey.example.test.",
            "TXT",
            [f'"{OTHER_KEY[:250]}" "{OTHER_KEY[250:]}"'],
        ),
        {
            ("dkim", "lab2026._domainkey.example.test"): (
                "is not the relay's key",
                'publish TXT at lab2026._domainkey.example.test: "v=DKIM1; k=rsa; p=MIIB',
            )
        },
    ),
    "dmarc-syntax-error": (
        ("example.test", "_dmarc.example.test.", "TXT", ['"v=DMARC1 p=none; rua=mailto:dmarc@example.test"']),
        {
            ("dmarc", "example.test"): (
                "a ';' is missing between two tags",
                "publish TXT at _dmarc.example.test",
            )
        },
    ),
}


@pytest.mark.parametrize("state", list(BROKEN))
def test_audit_catches_broken_state(state, tmp_path):
    (zone, name, rdtype, broken), expected = BROKEN[state]
    original = rrset_text(name, rdtype)
    replace(zone, name, rdtype, broken)
    try:
        proc, report = run_audit(tmp_path)
    finally:
        replace(zone, name, rdtype, original)
    assert proc.returncode != 0
    bad = failing(report)
    assert set(bad) == set(expected), sorted(bad)
    for key, (words, fix) in expected.items():
        assert bad[key]["status"] == "fail"
        assert words in bad[key]["message"], bad[key]["message"]
        assert fix in bad[key]["fix"], bad[key]["fix"]
    junit = (tmp_path / "audit.junit.xml").read_text()
    assert f'failures="{len(expected)}"' in junit
    assert "audit FAIL: " in proc.stdout  # the one-line verdict, last
    assert rrset_text(name, rdtype) == original
