"""The tls scenario, verified: outbound MTA-STS on a relay built by playbooks/relay.yml.

sts-ok.test publishes an enforce policy whose mx: names its MX: the mail leaves over verified
TLS, as Postfix's log and the sender's tracking say. sts-bad.test publishes an enforce policy
whose mx: names another host: its mail stays deferred with the policy's reason and never reaches
the MX. The audit's MTA-STS check passes, and fails when the resolver is stopped."""

import json
import uuid

import pytest
from labexec import run_audit, sh, wait_for

testinfra_hosts = ["docker://br-tls-relay"]

RELAY, DEST = "br-tls-relay", "br-tls-dest"
SENDER = "/opt/bulkrelay/venv/bin/bulkrelay"
MAP = "socketmap:inet:127.0.0.1:8461:postfix"
UNIT = "postfix-mta-sts-resolver.service"


def enqueue(recipient):
    """Queue one mail through the sender (as an application would) under a new reference."""
    ref = f"TLS-{uuid.uuid4().hex[:12]}"
    message = (
        f"From: billing@example.test\r\nTo: {recipient}\r\nSubject: {ref}\r\n"
        f"X-Bulkrelay-Ref: {ref}\r\nMessage-ID: <{ref}@example.test>\r\n\r\nInvoice {ref}\r\n"
    )
    sh(RELAY, f"runuser -u bulkrelay -- {SENDER} enqueue -q -", stdin=message)
    return ref


def events(ref):
    out = sh(RELAY, f"runuser -u bulkrelay -- {SENDER} events --ref {ref} --json").stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def queue_id(ref):
    return next((e["queue_id"] for e in events(ref) if e["type"] == "submitted" and e.get("queue_id")), None)


def postfix_log(pattern):
    return sh(RELAY, f"journalctl --no-pager -o cat -t postfix/smtp | grep -F -- {pattern!r} || true").stdout


@pytest.fixture(scope="module")
def sent():
    """One mail to each destination, queued together."""
    return {"ok": enqueue("alice@sts-ok.test"), "bad": enqueue("bob@sts-bad.test")}


# --- the resolver, as the role set it up ------------------------------------------------------


def test_resolver_runs_sandboxed_on_loopback_only(host):
    assert host.service(UNIT).is_running
    assert host.service(UNIT).is_enabled
    listeners = host.check_output("ss -Hltn 'sport = :8461'").splitlines()
    assert [line.split()[3] for line in listeners] == ["127.0.0.1:8461"]
    props = host.check_output(f"systemctl show -p User,ProtectProc,ProtectSystem,ReadWritePaths {UNIT}")
    assert "User=_mta-sts" in props
    assert "ProtectProc=invisible" in props
    assert "ProtectSystem=strict" in props
    assert "ReadWritePaths=/var/lib/mta-sts" in props and "/var/spool/postfix" not in props


def test_postfix_asks_the_overrides_first_then_mta_sts(host):
    maps = host.check_output("postconf -h smtp_tls_policy_maps")
    assert maps == f"texthash:/etc/postfix/tls_policy, {MAP}"


def test_the_map_answers_each_policy(host):
    assert host.check_output(f"postmap -q sts-ok.test {MAP}") == (
        "secure match=mx.sts-ok.test servername=hostname"
    )
    assert host.check_output(f"postmap -q sts-bad.test {MAP}") == (
        "secure match=mx.elsewhere.test servername=hostname"
    )
    # no policy published: nothing answered, Postfix's global level applies
    nothing = host.run(f"postmap -q example.test {MAP}")
    assert (nothing.rc, nothing.stdout, nothing.stderr) == (1, "", "")


# --- mail by MX to the two destinations ------------------------------------------------------


def test_enforce_policy_that_matches_gets_verified_tls(sent):
    ref = sent["ok"]
    delivered = wait_for(
        f"{ref} delivered", lambda: [e for e in events(ref) if e["type"] == "delivered"], timeout=120
    )
    assert delivered[0]["tls"] == "verified", delivered
    qid = queue_id(ref)
    assert qid
    line = wait_for(f"Postfix's log of {qid}", lambda: postfix_log(f"{qid}: to=<alice@sts-ok.test>"))
    assert "relay=mx.sts-ok.test[198.51.100.72]:25" in line and "status=sent" in line
    assert "Verified TLS connection established to mx.sts-ok.test[198.51.100.72]:25" in postfix_log(
        "Verified TLS connection established to mx.sts-ok.test"
    )
    # and the mail is in alice's mailbox on the MX
    assert sh(DEST, f"grep -rlF 'Subject: {ref}' /home/alice/Maildir/new", check=False).stdout.strip()
    shown = json.loads(sh(RELAY, f"runuser -u bulkrelay -- {SENDER} message show {ref} --json").stdout)
    assert [r["state"] for m in shown["messages"] for r in m["recipients"]] == ["delivered"]
    status = json.loads(sh(RELAY, f"runuser -u bulkrelay -- {SENDER} status --json").stdout)
    assert status["deliveries_by_tls"]["verified"] >= 1, status["deliveries_by_tls"]


def test_enforce_policy_that_does_not_match_keeps_mail_deferred(sent):
    ref = sent["bad"]
    qid = wait_for(f"{ref} handed to Postfix", lambda: queue_id(ref))
    reason = wait_for(
        f"the deferral of {qid}", lambda: postfix_log(f"{qid}: to=<bob@sts-bad.test>"), timeout=120
    )
    assert "status=deferred" in reason and "certificate" in reason.lower(), reason
    queue = [json.loads(line) for line in sh(RELAY, "postqueue -j").stdout.splitlines()]
    entry = next(q for q in queue if q["queue_id"] == qid)
    assert entry["queue_name"] == "deferred"
    (recipient,) = entry["recipients"]
    assert recipient["address"] == "bob@sts-bad.test"
    assert "Server certificate not verified" in recipient["delay_reason"], recipient
    assert "delivered" not in {e["type"] for e in events(ref)}
    # never reached the MX: nothing in bob's mailbox, no delivery to him in the MX's log
    assert sh(DEST, f"grep -rlF 'Subject: {ref}' /home/bob/Maildir 2>/dev/null", check=False).stdout == ""
    assert "bob@sts-bad.test" not in sh(DEST, "journalctl --no-pager -o cat -t postfix/local").stdout


# --- the audit ----------------------------------------------------------------------------------


def audit_mta_sts(report_dir):
    """The audit's MTA-STS check of this relay (the DNSBL checks have no lab lists here)."""
    _, checks = run_audit(report_dir, "--limit", f"{RELAY},localhost", "-e", "audit__dnsbl=false")
    return checks[("postfix", "mta-sts")]


def test_audit_sees_mta_sts_in_effect_and_a_stopped_resolver_fails(tmp_path):
    good = audit_mta_sts(tmp_path / "good")
    assert good["status"] == "pass", good
    assert f"{MAP} answers (example.test: no policy enforced)" in good["message"]
    sh(RELAY, f"systemctl stop {UNIT}")
    try:
        broken = audit_mta_sts(tmp_path / "broken")
    finally:
        sh(RELAY, f"systemctl start {UNIT}")
    assert broken["status"] == "fail", broken
    assert f"{UNIT} is inactive/dead" in broken["message"]
    assert "journalctl -u" in broken["fix"]
