"""The tls scenario, verified: outbound MTA-STS on a relay built by playbooks/relay.yml.

sts-ok.test publishes an enforce policy whose mx: names its MX: the mail leaves over verified
TLS, as Postfix's log and the sender's tracking say. sts-bad.test publishes an enforce policy
whose mx: names another host: its mail stays deferred with the policy's reason and never reaches
the MX. sts-testing.test publishes the same under mode: testing: its mail is delivered (not
enforced, RFC 8461) and the sender's tracking logs that enforce would have deferred it. The
audit's MTA-STS check passes, and fails when the resolver is stopped.

DANE (bulkrelay_tls_policy: dane): unbound on the relay validates the signed lab zone dane.test.
ok.dane.test's MX matches its TLSA record (verified TLS); bad.dane.test's does not (deferred,
never delivered). A converge whose trust anchor does not match is refused before Postfix
changes; the audit's dane check fails when unbound is stopped."""

import json
import uuid

import pytest
from labexec import ansible, run_audit, sh, wait_for

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
    return {
        "ok": enqueue("alice@sts-ok.test"),
        "bad": enqueue("bob@sts-bad.test"),
        "testing": enqueue("alice@sts-testing.test"),
        "dane-ok": enqueue("alice@ok.dane.test"),
        "dane-bad": enqueue("bob@bad.dane.test"),
    }


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
    # testing: not for Postfix; the strict zone the sender's tracking asks has it
    assert host.run(f"postmap -q sts-testing.test {MAP}").rc == 1
    assert host.check_output(f"postmap -q sts-testing.test {MAP.replace(':postfix', ':testing')}") == (
        "secure match=mx.elsewhere.test servername=hostname"
    )
    # no policy published: nothing answered, Postfix's global level applies
    nothing = host.run(f"postmap -q example.test {MAP}")
    assert (nothing.rc, nothing.stdout, nothing.stderr) == (1, "", "")


# --- mail by MX to the two destinations ------------------------------------------------------


def assert_verified_delivery(ref, user, domain, mx):
    """``ref`` reached ``user``@``domain`` by its MX over TLS Postfix verified, as the log and
    the sender's tracking say."""
    delivered = wait_for(
        f"{ref} delivered", lambda: [e for e in events(ref) if e["type"] == "delivered"], timeout=120
    )
    assert delivered[0]["tls"] == "verified", delivered
    qid = queue_id(ref)
    assert qid
    line = wait_for(f"Postfix's log of {qid}", lambda: postfix_log(f"{qid}: to=<{user}@{domain}>"))
    assert f"relay={mx}[198.51.100.72]:25" in line and "status=sent" in line
    assert f"Verified TLS connection established to {mx}[198.51.100.72]:25" in postfix_log(
        f"Verified TLS connection established to {mx}"
    )
    # and the mail is in the mailbox on the MX
    assert sh(DEST, f"grep -rlF 'Subject: {ref}' /home/{user}/Maildir/new", check=False).stdout.strip()
    shown = json.loads(sh(RELAY, f"runuser -u bulkrelay -- {SENDER} message show {ref} --json").stdout)
    assert [r["state"] for m in shown["messages"] for r in m["recipients"]] == ["delivered"]
    status = json.loads(sh(RELAY, f"runuser -u bulkrelay -- {SENDER} status --json").stdout)
    assert status["deliveries_by_tls"]["verified"] >= 1, status["deliveries_by_tls"]


def assert_deferred_unverified(ref, user, domain):
    """``ref`` stays deferred ("Server certificate not verified") and never reaches the MX."""
    qid = wait_for(f"{ref} handed to Postfix", lambda: queue_id(ref))
    reason = wait_for(
        f"the deferral of {qid}", lambda: postfix_log(f"{qid}: to=<{user}@{domain}>"), timeout=120
    )
    assert "status=deferred" in reason and "certificate" in reason.lower(), reason
    queue = [json.loads(line) for line in sh(RELAY, "postqueue -j").stdout.splitlines()]
    entry = next(q for q in queue if q["queue_id"] == qid)
    assert entry["queue_name"] == "deferred"
    (recipient,) = entry["recipients"]
    assert recipient["address"] == f"{user}@{domain}"
    assert "Server certificate not verified" in recipient["delay_reason"], recipient
    assert "delivered" not in {e["type"] for e in events(ref)}
    # never reached the MX: nothing in the mailbox, no delivery in the MX's log
    assert sh(DEST, f"grep -rlF 'Subject: {ref}' /home/{user}/Maildir 2>/dev/null", check=False).stdout == ""
    assert f"{user}@{domain}" not in sh(DEST, "journalctl --no-pager -o cat -t postfix/local").stdout


def test_enforce_policy_that_matches_gets_verified_tls(sent):
    assert_verified_delivery(sent["ok"], "alice", "sts-ok.test", "mx.sts-ok.test")


def test_enforce_policy_that_does_not_match_keeps_mail_deferred(sent):
    assert_deferred_unverified(sent["bad"], "bob", "sts-bad.test")


def test_testing_policy_that_does_not_match_delivers_and_is_logged(sent):
    ref = sent["testing"]
    delivered = wait_for(
        f"{ref} delivered", lambda: [e for e in events(ref) if e["type"] == "delivered"], timeout=120
    )
    assert delivered[0]["tls"] in ("untrusted", "trusted", "anonymous"), delivered
    assert sh(DEST, f"grep -rlF 'Subject: {ref}' /home/alice/Maildir/new", check=False).stdout.strip()
    warning = wait_for(
        "the sender's MTA-STS testing warning",
        lambda: (
            sh(
                RELAY,
                "journalctl --no-pager -o cat -u bulkrelay-sender.service "
                "| grep -F 'event=mta_sts_testing domain=sts-testing.test' || true",
            ).stdout
        ),
    )
    assert "policy_mx=mx.elsewhere.test relay=mx.sts-testing.test[198.51.100.72]:25" in warning, warning
    assert f"tls={delivered[0]['tls']}" in warning and "would have been deferred" in warning
    # one warning for the domain, none for the enforced or verified destinations
    assert len(warning.splitlines()) == 1
    others = sh(
        RELAY, "journalctl --no-pager -o cat -u bulkrelay-sender.service | grep -F event=mta_sts_testing"
    )
    assert others.stdout.count("event=mta_sts_testing ") == 1


# --- DANE ----------------------------------------------------------------------------------------


def test_postfix_uses_dane_through_the_local_validating_resolver(host):
    assert host.check_output("postconf -h smtp_tls_security_level smtp_dns_support_level").split() == [
        "dane",
        "dnssec",
    ]
    assert host.service("unbound.service").is_running
    listeners = host.check_output("ss -Hlun 'sport = :53'").splitlines()
    assert [line.split()[3] for line in listeners] == ["127.0.0.1:53"]
    resolv = [line for line in host.file("/etc/resolv.conf").content_string.splitlines() if line[:1] != "#"]
    assert resolv == ["nameserver 127.0.0.1", "options edns0 trust-ad"]
    assert " ad;" in host.check_output("dig +dnssec dane.test. SOA | grep '^;; flags'")
    assert "status: SERVFAIL" in host.check_output("dig +dnssec bogus.test. SOA")


def test_tlsa_that_matches_gets_verified_tls(sent):
    assert_verified_delivery(sent["dane-ok"], "alice", "ok.dane.test", "mx-ok.dane.test")


def test_tlsa_that_does_not_match_keeps_mail_deferred(sent):
    assert_deferred_unverified(sent["dane-bad"], "bob", "bad.dane.test")


def test_a_resolver_that_does_not_validate_is_refused_before_postfix_changes():
    """An operator turning DANE on (Postfix at may) with a trust anchor that does not match the
    zone's key: the run stops at the probe, and Postfix stays at may."""
    sh(
        RELAY,
        "cp /etc/unbound/unbound.conf /root/unbound.conf.good && postconf -e smtp_tls_security_level=may",
    )
    wrong = json.dumps({"relay_resolver__trust_anchors": ["dane.test. DS 12345 13 2 " + "cd" * 32]})
    try:
        run = ansible("playbooks/relay.yml", "--limit", RELAY, "-e", wrong)
        assert run.returncode != 0
        out = run.stdout + run.stderr
        assert (
            "relay_resolver: unbound on 127.0.0.1 does not validate DNSSEC (not validated: dane.test. SOA "
            in out
        )
        assert "DANE stays off; fix the trust anchors" in out
        assert "TASK [relay_postfix : Write main.cf" not in out  # the role never ran
        assert sh(RELAY, "postconf -h smtp_tls_security_level").stdout.strip() == "may"
    finally:
        sh(
            RELAY,
            "cp /root/unbound.conf.good /etc/unbound/unbound.conf && systemctl restart unbound "
            "&& postconf -e smtp_tls_security_level=dane && postfix reload",
        )


# --- the audit ----------------------------------------------------------------------------------


def audit_mta_sts(report_dir):
    """The audit's MTA-STS check of this relay (the DNSBL checks have no lab lists here)."""
    _, checks = run_audit(report_dir, "--limit", f"{RELAY},localhost", "-e", "audit__dnsbl=false")
    return checks[("postfix", "mta-sts")]


def test_audit_sees_dane_validated_and_a_stopped_unbound_fails(tmp_path):
    _, checks = run_audit(tmp_path / "good", "--limit", f"{RELAY},localhost", "-e", "audit__dnsbl=false")
    good = checks[("postfix", "dane")]
    assert good["status"] == "pass", good
    assert (
        "unbound.service runs and validates (dane.test. SOA came back validated (AD flag))" in good["message"]
    )
    sh(RELAY, "systemctl stop unbound.service")
    try:
        _, checks = run_audit(
            tmp_path / "broken", "--limit", f"{RELAY},localhost", "-e", "audit__dnsbl=false"
        )
    finally:
        sh(RELAY, "systemctl start unbound.service")
    broken = checks[("postfix", "dane")]
    assert broken["status"] == "fail", broken
    assert "unbound.service is inactive/dead" in broken["message"]
    assert "journalctl -u unbound.service" in broken["fix"]


def test_audit_fails_dane_when_resolv_conf_drops_trust_ad(tmp_path):
    """unbound still validates, but glibc would clear the AD flag Postfix needs."""
    saved = sh(RELAY, "cat /etc/resolv.conf").stdout
    # written in place: the container runtime bind-mounts the file
    sh(RELAY, "sed 's/ trust-ad//' /etc/resolv.conf > /tmp/resolv && cat /tmp/resolv > /etc/resolv.conf")
    try:
        _, checks = run_audit(tmp_path, "--limit", f"{RELAY},localhost", "-e", "audit__dnsbl=false")
    finally:
        sh(RELAY, "cat > /etc/resolv.conf", stdin=saved)
    broken = checks[("postfix", "dane")]
    assert broken["status"] == "fail", broken
    assert "/etc/resolv.conf lacks `options trust-ad`" in broken["message"]
    assert sh(RELAY, "cat /etc/resolv.conf").stdout == saved


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
