"""The audit's posture judges (bulkrelay.audit): each check passes a healthy relay, fails the
fault it exists for with a message that names the fix, and never passes what it cannot read."""

import base64
import json
from datetime import UTC, datetime

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from bulkrelay import audit
from bulkrelay.dns.resolver import Answer
from bulkrelay.dns.result import CheckResult

HEALTHY_POSTCONF = """myhostname = relay.example.test
inet_interfaces = loopback-only
mynetworks = 127.0.0.0/8 [::1]/128
smtpd_relay_restrictions = permit_mynetworks, permit_sasl_authenticated, reject
smtp_tls_security_level = may
"""


def ok(stdout="", rc=0, stderr=""):
    return {"rc": rc, "stdout": stdout, "stderr": stderr}


def by_subject(results):
    return {r.subject: r for r in results}


def test_healthy_postfix_passes():
    results = audit.judge_postfix(ok(HEALTHY_POSTCONF), "relay.example.test")
    assert [r.status for r in results] == ["pass"] * 5


@pytest.mark.parametrize(
    ("setting", "value", "words"),
    [
        ("inet_interfaces", "all", "inet_interfaces = loopback-only"),
        ("inet_interfaces", "", "loopback-only"),
        ("mynetworks", "127.0.0.0/8 [::1]/128 0.0.0.0/0", "mynetworks = 127.0.0.0/8"),
        ("mynetworks", "127.0.0.0/8 198.51.100.0/24", "198.51.100.0/24"),
        ("smtpd_relay_restrictions", "permit_mynetworks, permit", "reject"),
        ("smtpd_relay_restrictions", "permit_mynetworks, permit_sasl_authenticated", "reject"),
        ("smtp_tls_security_level", "none", "smtp_tls_security_level = may"),
        ("smtp_tls_security_level", "", "smtp_tls_security_level = may"),
        ("myhostname", "localhost", "myhostname = relay.example.test"),
    ],
)
def test_each_postfix_fault_fails_with_its_fix(setting, value, words):
    text = HEALTHY_POSTCONF.replace(
        next(line for line in HEALTHY_POSTCONF.splitlines() if line.startswith(setting + " ")),
        f"{setting} = {value}",
    )
    result = by_subject(audit.judge_postfix(ok(text), "relay.example.test"))[setting]
    assert result.status == "fail", result
    assert words in result.message + result.fix
    assert "site.yml" in result.fix


def test_unreadable_postconf_is_error_not_pass():
    for raw in (ok("", rc=1, stderr="postconf: fatal"), ok("garbage"), None):
        assert {r.status for r in audit.judge_postfix(raw, "relay.example.test")} == {"error"}


@pytest.mark.parametrize(
    ("rc", "status", "words"),
    [
        (0, "pass", "equals"),
        (1, "fail", "differs"),
        (2, "fail", "not loaded"),
        (3, "error", "could not tell"),
    ],
)
def test_firewall(rc, status, words):
    out = "--- rendered\n+++ live\n-tcp dport 25 drop\n+tcp dport 25 accept\n" if rc == 1 else ""
    result = audit.judge_firewall(ok(out, rc=rc))
    assert result.status == status and words in result.message
    if rc == 1:
        assert "+tcp dport 25 accept" in result.message and "site.yml" in result.fix


SS_HEALTHY = """LISTEN 0 100 127.0.0.1:25 0.0.0.0:* users:(("master",pid=1,fd=13))
LISTEN 0 4096 127.0.0.1:8891 0.0.0.0:* users:(("opendkim",pid=2,fd=3))
LISTEN 0 100 0.0.0.0:2525 0.0.0.0:* users:(("bulkrelay",pid=3,fd=6))
LISTEN 0 100 [::1]:25 [::]:* users:(("master",pid=1,fd=14))
LISTEN 0 4096 127.0.0.11:40000 0.0.0.0:*
"""


def test_listeners():
    assert audit.judge_listeners(ok(SS_HEALTHY), [2525], [22]).status == "pass"
    opened = SS_HEALTHY + 'LISTEN 0 100 0.0.0.0:25 0.0.0.0:* users:(("master",pid=1,fd=15))\n'
    result = audit.judge_listeners(ok(opened), [2525], [22])
    assert result.status == "fail" and "0.0.0.0:25 (master)" in result.message
    assert "inet_interfaces" in result.fix
    stopped = "\n".join(line for line in SS_HEALTHY.splitlines() if ":2525" not in line)
    result = audit.judge_listeners(ok(stopped), [2525], [22])
    assert result.status == "fail" and "2525" in result.message and "bulkrelay-sender" in result.fix
    assert audit.judge_listeners(ok("", rc=1), [2525], []).status == "error"


def unit(name, active="active", sub="running", result="success", load="loaded", status="0"):
    return (
        f"Id={name}\nLoadState={load}\nActiveState={active}\nSubState={sub}\nResult={result}\n"
        f"ExecMainStatus={status}\n"
    )


UNITS = {
    "postfix@-.service": "running",
    "bulkrelay-bounces.timer": "timer",
    "bulkrelay-bounces.service": "oneshot",
}


def test_units():
    healthy = "\n".join(
        [
            unit("postfix@-.service"),
            unit("bulkrelay-bounces.timer", sub="waiting"),
            unit("bulkrelay-bounces.service", active="inactive", sub="dead"),
        ]
    )
    assert {r.status for r in audit.judge_units(ok(healthy), UNITS)} == {"pass"}
    broken = "\n".join(
        [
            unit("postfix@-.service", active="inactive", sub="dead"),
            unit("bulkrelay-bounces.timer", sub="waiting"),
            unit("bulkrelay-bounces.service", active="failed", sub="failed", result="exit-code", status="1"),
        ]
    )
    results = by_subject(audit.judge_units(ok(broken), UNITS))
    assert results["postfix@-.service"].status == "fail"
    poller = results["bulkrelay-bounces.service"]
    assert poller.status == "fail" and "FAILED" in poller.message and "journalctl -u" in poller.fix
    # a pass running now: systemd has reset Result to success at its start, so the last
    # outcome cannot be told (playbooks/audit.yml reads again until no pass runs)
    retrying = unit("bulkrelay-bounces.service", active="activating", sub="start")
    poller = by_subject(audit.judge_units(ok(retrying), UNITS))["bulkrelay-bounces.service"]
    assert poller.status == "error" and "could not tell" in poller.message
    # the timer while its service runs is healthy
    running = healthy.replace("SubState=waiting", "SubState=running")
    assert by_subject(audit.judge_units(ok(running), UNITS))["bulkrelay-bounces.timer"].status == "pass"
    assert (
        by_subject(audit.judge_units(ok(running.replace("Result=success", "Result=exit-code", 2)), UNITS))[
            "bulkrelay-bounces.timer"
        ].status
        == "fail"
    )
    assert {r.status for r in audit.judge_units(ok("", rc=1), UNITS)} == {"error"}


def test_dnsbl_cron_age():
    state = ok(json.dumps({"status": "OK", "checked_at": "2026-11-30T03:00:00Z"}))
    now = datetime(2026, 11, 30, 3, tzinfo=UTC).timestamp()
    assert audit.judge_dnsbl_cron(state, now + 60, 7200).status == "pass"
    late = audit.judge_dnsbl_cron(state, now + 9000, 7200)
    assert late.status == "fail" and "cron" in late.fix
    assert audit.judge_dnsbl_cron(ok("", rc=1, stderr="No such file"), now, 7200).status == "fail"
    assert audit.judge_dnsbl_cron(ok("{not json"), now, 7200).status == "error"


def queue_entry(age, name="deferred", now=10_000.0):
    return json.dumps(
        {
            "queue_name": name,
            "queue_id": "4ABC",
            "arrival_time": int(now - age),
            "recipients": [{"address": "a@customer.test", "delay_reason": "connect refused"}],
        }
    )


def test_queue_age():
    now = 10_000.0
    assert audit.judge_queue(ok(queue_entry(10)), now, 3600).status == "pass"
    assert audit.judge_queue(ok(queue_entry(9000, name="active")), now, 3600).status == "pass"
    old = audit.judge_queue(ok(queue_entry(4000) + "\n" + queue_entry(5)), now, 3600)
    assert old.status == "fail" and "4ABC" in old.message and "connect refused" in old.message
    assert "postsuper -d" in old.fix
    assert audit.judge_queue(ok("", rc=1), now, 3600).status == "error"
    assert audit.judge_queue(ok("{broken"), now, 3600).status == "error"


def webhooks_json(*hooks, configured=True):
    """`bulkrelay webhooks status --json` output; a hook is (name, oldest pending age, parked)."""
    now = 10_000.0
    rows = [
        {
            "name": name,
            "pending": 0 if age is None else 3,
            "oldest_pending_timestamp": None if age is None else now - age,
            "parked": parked,
            "last_error": "HTTP 503" if age else None,
        }
        for name, age, parked in hooks
    ]
    return json.dumps({"configured": configured, "webhooks": rows, "error": None})


@pytest.mark.parametrize(
    ("stdout", "rc", "status", "words"),
    [
        (webhooks_json(configured=False), 0, "pass", ["no webhooks configured"]),
        (webhooks_json(("erp", None, 0)), 0, "pass", ["1 webhook(s), 0 event(s) pending"]),
        (webhooks_json(("erp", 10, 0), ("crm", None, 0)), 0, "pass", ["2 webhook(s), 3 event(s)"]),
        (
            webhooks_json(("erp", 10, 0), ("crm", 4000, 0)),
            0,
            "fail",
            ["webhook crm", "4000 s old", "HTTP 503"],
        ),
        (webhooks_json(("erp", None, 2)), 0, "fail", ["webhook erp: 2 event(s) parked"]),
        ("{broken", 0, "error", ["could not tell"]),
        ('{"configured": true}', 0, "error", ["could not tell"]),
        ("", 2, "error", ["could not tell", "bad key"]),
    ],
)
def test_webhooks_verdicts(stdout, rc, status, words):
    result = audit.judge_webhooks(ok(stdout, rc=rc, stderr="bad key"), 10_000.0, 3600)
    assert result.status == status
    for word in words:
        assert word in result.message
    assert bool(result.fix) == (status == "fail")
    if status == "fail":
        assert "bulkrelay webhooks status" in result.fix


FW_OK = CheckResult("firewall", "t", "pass", "")
FW_GONE = CheckResult("firewall", "t", "fail", "")


@pytest.mark.parametrize(
    ("state", "firewall", "status"),
    [
        ("refused", FW_GONE, "pass"),
        ("connected", FW_OK, "fail"),
        ("timeout", FW_OK, "pass"),
        ("timeout", FW_GONE, "error"),  # silence without evidence: could not tell
        ("error", FW_OK, "error"),
    ],
)
def test_probe_outcomes(state, firewall, status):
    result = audit.judge_probe("198.51.100.101", 25, state, "", firewall, "inbound SMTP")
    assert result.status == status
    if status != "pass":
        assert result.fix


class Zone:
    def __init__(self, txt):
        self.txt = txt

    def query(self, name, rdtype):
        if self.txt is None:
            return Answer(name, rdtype, "error", error="timeout")
        return Answer(name, rdtype, "ok", [(self.txt.encode(),)])


def signed_message():
    """A message signed with a fresh key, as OpenDKIM would return it, and its DNS record."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    pub = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    msg = b"From: a@example.test\r\nTo: a@example.test\r\nSubject: t\r\n\r\nbody\r\n"
    sig = dkim.sign(msg, b"lab", b"example.test", pem, include_headers=[b"from", b"to", b"subject"])
    return (sig + msg).decode(), "v=DKIM1; k=rsa; p=" + base64.b64encode(pub).decode()


def test_dkim_signature_verifies_or_fails():
    message, record = signed_message()
    probe = {"state": "signed", "message": message}
    lookup = audit.txt_lookup_from(Zone(record))
    assert audit.judge_dkim_signature("example.test", probe, lookup).status == "pass"
    _, other = signed_message()
    wrong = audit.judge_dkim_signature("example.test", probe, audit.txt_lookup_from(Zone(other)))
    assert wrong.status == "fail" and "does not verify" in wrong.message
    unknown = audit.judge_dkim_signature("example.test", probe, audit.txt_lookup_from(Zone(None)))
    assert unknown.status == "error"
    stopped = audit.judge_dkim_signature(
        "example.test", {"state": "refused", "socket": "inet:8891@127.0.0.1"}, lookup
    )
    assert stopped.status == "fail" and "systemctl start opendkim" in stopped.fix
    assert audit.judge_dkim_signature("example.test", {}, lookup).status == "error"
