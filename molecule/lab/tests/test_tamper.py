"""Every audit check proves it can fail (issue 14): break the relay the lab built, one fault
at a time, and run playbooks/audit.yml after each. It must exit non-zero with that fault's
check FAIL or ERROR (PASS in the audit before), naming the fault and the fix; a check whose
verdict is a warning (an old DKIM key) must WARN. Then one site.yml re-run (plus the steps that
are not site.yml's: the PTR at the provider, delisting, the queue, the key's age) repairs them
all and every check that turned passes again.

Runs after test_story.py (file order). Faults pile up so one site.yml run repairs them; each is
ordered so that no earlier fault hides its check. The table of results goes to
reports/lab/faults.md.
"""

import base64
import json
import time

import dns.query
import dns.rcode
import dns.tsigkeyring
import dns.update
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from labexec import PROJECT, ansible, poller_pass, run_audit, sh
from labhosts import BIND, RELAY, RELAY_IP, set_relay_listed

TSIG_SECRET = "0wVmlbKLxUDjX0hRGi0o2vBj9tjnAfs3bnyzDPj6QHg="  # the lab fixture's (group_vars/all.yml)
TSIG = dns.tsigkeyring.from_text({"bulkrelay-lab": TSIG_SECRET})
QUEUE_MAX_AGE = 5  # seconds: the threshold the queue fault and the final audit use
DKIM_KEY = "/etc/dkimkeys/example.test/lab2026.private"  # roles/relay_dkim: <dir>/<domain>/<selector>

STATE = {"before": None, "rows": [], "timings": [], "dkim_key_mtime": None}


def audit(tmp_path, *extra):
    started = time.monotonic()
    result, checks = run_audit(tmp_path, *extra)
    STATE["timings"].append(("audit", round(time.monotonic() - started, 1)))
    return result, checks


def dns_update(zone, *changes):
    update = dns.update.Update(zone, keyring=TSIG, keyalgorithm="hmac-sha256")
    for op, name, *rest in changes:
        getattr(update, op)(name, *rest)
    response = dns.query.tcp(update, BIND, timeout=10)
    assert response.rcode() == dns.rcode.NOERROR, dns.rcode.to_text(response.rcode())


def other_dkim_key():
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    text = "v=DKIM1; k=rsa; p=" + base64.b64encode(der).decode()
    return " ".join(f'"{text[i : i + 200]}"' for i in range(0, len(text), 200))


def defer_a_message():
    # Nothing listens on the outsider's port 25: the delivery is refused, the mail is deferred.
    sh(
        RELAY,
        "printf 'Subject: audit queue test\\n\\ntest\\n'"
        " | sendmail -f postmaster@example.test 'x@[198.51.100.103]'",
    )
    deadline = time.monotonic() + 60
    while '"queue_name": "deferred"' not in sh(RELAY, "postqueue -j").stdout:
        assert time.monotonic() < deadline, "the test message was not deferred"
        time.sleep(1)
    time.sleep(QUEUE_MAX_AGE + 2)


def start_failing_poller():
    sh(RELAY, "echo wrong-password > /etc/bulkrelay/imap-password")
    poller_pass(RELAY)


def age_the_dkim_key():
    # The audit reads the key's mtime (stat); past audit__dkim_max_age_days (180) it warns.
    STATE["dkim_key_mtime"] = sh(RELAY, f"stat -c %y {DKIM_KEY}").stdout.strip()
    sh(RELAY, f"touch -m -d '200 days ago' {DKIM_KEY}")


def change_a_rule():
    handle = sh(
        RELAY, "nft -a list chain inet bulkrelay input | grep 'tcp dport 25 counter' | sed 's/.*# handle //'"
    )
    sh(RELAY, f"nft delete rule inet bulkrelay input handle {handle.stdout.strip()}")


# (fault, how to break it, [((check, subject), words its message must hold[, verdict])], extra
# audit arguments); the verdict is fail or error unless named.
FAULTS = [
    (
        "deferred mail older than the threshold",
        defer_a_message,
        [(("queue", "deferred"), "deferred")],
        ["-e", f"audit__queue_max_age={QUEUE_MAX_AGE}"],
    ),
    (
        "mynetworks widened",
        lambda: sh(RELAY, "postconf -e 'mynetworks = 127.0.0.0/8 [::1]/128 0.0.0.0/0' && postfix reload"),
        [(("postfix", "mynetworks"), "0.0.0.0/0")],
        [],
    ),
    (
        "permissive relay restrictions",
        lambda: sh(
            RELAY, "postconf -e 'smtpd_relay_restrictions = permit_mynetworks, permit' && postfix reload"
        ),
        [(("postfix", "smtpd_relay_restrictions"), "open relay")],
        [],
    ),
    (
        "outbound TLS off",
        lambda: sh(RELAY, "postconf -e smtp_tls_security_level=none && postfix reload"),
        [(("postfix", "smtp_tls_security_level"), "clear text")],
        [],
    ),
    (
        "DKIM key older than the limit",
        age_the_dkim_key,
        [(("dkim-key-age", "example.test"), f"({DKIM_KEY}) is 200 days old", "warn")],
        [],
    ),
    (
        "DKIM milter stopped",
        lambda: sh(RELAY, "systemctl stop opendkim"),
        [(("dkim-sign", "example.test"), "does not answer"), (("service", "opendkim.service"), "inactive")],
        [],
    ),
    (
        "sender stopped",
        lambda: sh(RELAY, "systemctl stop bulkrelay-sender"),
        [(("service", "bulkrelay-sender.service"), "inactive")],
        [],
    ),
    (
        "bounce poller failing",
        start_failing_poller,
        [(("service", "bulkrelay-bounces.service"), "FAILED")],
        [],
    ),
    (
        "a rule of the table changed",
        change_a_rule,
        [(("firewall", "table inet bulkrelay"), "tcp dport 25")],
        [],
    ),
    (
        "Postfix on all interfaces",
        lambda: sh(RELAY, "postconf -e inet_interfaces=all && systemctl restart postfix"),
        [(("postfix", "inet_interfaces"), "inet_interfaces = all")],
        [],
    ),
    (
        "firewall table deleted (with the above: port 25 reachable)",
        lambda: sh(RELAY, "nft delete table inet bulkrelay"),
        [
            (("firewall", "table inet bulkrelay"), "not loaded"),
            (("reach", f"{RELAY_IP} port 25"), "accepts connections"),
        ],
        [],
    ),
    (
        "DKIM key not matching DNS",
        lambda: dns_update("example.test.", ("replace", "lab2026._domainkey", 300, "TXT", other_dkim_key())),
        [(("dkim", "lab2026._domainkey.example.test"), "")],
        [],
    ),
    (
        "SPF without the relay's IP",
        lambda: dns_update(
            "example.test.", ("delete", "@", "TXT"), ("add", "@", 300, "TXT", '"v=spf1 mx -all"')
        ),
        [(("spf", f"example.test {RELAY_IP}"), "")],
        [],
    ),
    (
        "PTR not equal to the HELO name",
        lambda: dns_update(
            "100.51.198.in-addr.arpa.", ("replace", "101", 300, "PTR", "elsewhere.example.test.")
        ),
        [(("fcrdns", RELAY_IP), "")],
        [],
    ),
    (
        "relay MX missing",
        lambda: dns_update("example.test.", ("delete", "relay", "MX")),
        [(("mx", "relay.example.test"), "")],
        [],
    ),
    (
        "DMARC missing",
        lambda: dns_update("example.test.", ("delete", "_dmarc", "TXT")),
        [(("dmarc", "example.test"), "")],
        [],
    ),
    (
        "TLS-RPT record invalid",
        lambda: dns_update(
            "example.test.", ("replace", "_smtp._tls", 300, "TXT", '"v=TLSRPTv1; rua=tlsrpt@example.test"')
        ),
        [(("tlsrpt", "example.test"), "TLS-RPT record at _smtp._tls.example.test is invalid")],
        [],
    ),
    (
        "relay listed on a DNSBL",
        lambda: set_relay_listed(True),
        [(("dnsbl", RELAY_IP), "bl.lab.test")],
        [],
    ),
]


def test_the_healthy_relay_passes_before_any_fault(healthy_audit):
    result, checks = healthy_audit  # the audit test_story.py also reads
    bad = {k: v for k, v in checks.items() if v["status"] in ("fail", "error")}
    assert result.returncode == 0 and not bad, json.dumps(list(bad.values()), indent=1)
    STATE["before"] = checks


# Faults whose checks cannot hide each other share one audit run (each audit costs ~25 s);
# a fault that would hide another's check (the deleted table hides the changed rule) waits
# for the next run.
BATCHES = [FAULTS[0:5], FAULTS[5:8], FAULTS[8:10], FAULTS[10:11], FAULTS[11:18]]


@pytest.mark.parametrize("batch", BATCHES, ids=[" + ".join(f[0] for f in b) for b in BATCHES])
def test_each_fault_is_caught(tmp_path, batch):
    before = STATE["before"] or {}
    for _, breaks, _, _ in batch:
        breaks()
    result, checks = audit(tmp_path, *(arg for fault in batch for arg in fault[3]))
    STATE["before"] = checks
    missing = {"status": "missing", "message": "", "fix": ""}
    for fault, _, expect, _ in batch:
        for key, *_ in expect:
            STATE["rows"].append(
                [fault, " ".join(key), checks.get(key, missing)["status"], result.returncode]
            )
    assert result.returncode != 0
    for _, _, expect, _ in batch:
        for key, words, *verdict in expect:
            check, earlier = checks.get(key, missing), before.get(key, missing)
            assert check["status"] in (verdict or ["fail", "error"]), check
            # this fault, not an earlier one, turned the check (or changed what it says)
            assert (earlier["status"], earlier["message"]) != (check["status"], check["message"]), check
            assert words in check["message"], check
            assert check["fix"], check


# Secrets a leak test looks for in `site.yml --check --diff` (issue 19): the lab's IMAP password
# (the poller fault changed the file, so the check wants to write it back), the TSIG secret,
# any private key, and a DQS key given for this run only (the DNSBL settings file would change).
DQS_CANARY = "dqs-canary-5f1c0a9e"
WEBHOOK_SECRET = "lab-webhook-secret-not-a-real-one"  # the fixture's (group_vars/all.yml)
SECRETS = [DQS_CANARY, "lab-bounce-imap-secret", TSIG_SECRET.rstrip("="), WEBHOOK_SECRET, "PRIVATE KEY"]
WEBHOOKS_TOML = "/etc/bulkrelay/webhooks.toml"


def task_output(run, task):
    """What ansible-playbook printed for one task (from its TASK line to the next)."""
    assert f"TASK [{task}" in run.stdout, run.stdout[-4000:]
    return run.stdout.split(f"TASK [{task}", 1)[1].split("TASK [", 1)[0]


def test_site_yml_check_diff_reports_what_it_would_fix_and_prints_no_secret():
    # All roles, in check mode: they must name the drift, touch nothing, and print no secret.
    # The webhooks' settings drifted too (a secret edited by hand): reported, never shown.
    sh(RELAY, f"sed -i 's/^secret = .*/secret = \"edited-by-hand-0123456789\"/' {WEBHOOKS_TOML}")
    started = time.monotonic()
    check = ansible(
        str(PROJECT / "site.yml"), "--check", "--diff", "-e", f"dnsbl_monitor__dqs_key={DQS_CANARY}"
    )
    STATE["timings"].append(("site.yml --check --diff", round(time.monotonic() - started, 1)))
    assert check.returncode == 0, check.stdout[-4000:]
    out = check.stdout
    assert "table inet bulkrelay is not loaded" in out, out[-4000:]
    assert "-inet_interfaces = all" in out and "+inet_interfaces = loopback-only" in out, out[-4000:]
    assert "Postfix listens on 0.0.0.0:25" in out, out[-4000:]
    assert "RUNNING HANDLER [relay_firewall : Check and reload the bulkrelay firewall]" in out
    # the tasks holding the secrets still say that they would change something
    for task in (
        "dnsbl_monitor : Write the check settings",
        "bounce_poller : Write the IMAP password",
        "relay_sender : Write the webhooks' settings",
    ):
        result = task_output(check, task)
        assert "changed: [br-lab-relay]" in result, f"{task}: {result[:1000]}"
    leaked = [secret for secret in SECRETS if secret in out or secret in check.stderr]
    assert not leaked, f"site.yml --check --diff printed {leaked}"
    # nothing was repaired by the check
    assert sh(RELAY, "/usr/local/sbin/bulkrelay-firewall-diff", check=False).returncode == 2
    assert sh(RELAY, "systemctl is-active opendkim", check=False).stdout.strip() != "active"
    assert sh(RELAY, "cat /etc/bulkrelay/imap-password").stdout.strip() == "wrong-password"
    assert "edited-by-hand" in sh(RELAY, f"cat {WEBHOOKS_TOML}").stdout


def test_no_webhooks_stops_the_service_and_removes_its_files():
    """bulkrelay_webhooks: [] takes the webhooks away (the repair below puts them back)."""
    started = time.monotonic()
    no_webhooks = ["-e", '{"bulkrelay_webhooks": []}']
    run = ansible(str(PROJECT / "playbooks/sender.yml"), "--tags", "relay_sender_webhooks", *no_webhooks)
    STATE["timings"].append(("sender.yml without webhooks", round(time.monotonic() - started, 1)))
    assert run.returncode == 0, run.stdout[-4000:]
    assert sh(RELAY, "systemctl is-active bulkrelay-webhooks", check=False).stdout.strip() != "active"
    assert sh(RELAY, "systemctl is-enabled bulkrelay-webhooks", check=False).returncode != 0
    files = f"{WEBHOOKS_TOML} /etc/bulkrelay/webhook-ca /etc/systemd/system/bulkrelay-webhooks.service"
    assert sh(RELAY, f"ls -d {files}", check=False).stdout.strip() == ""


def test_mta_sts_off_stops_the_resolver_and_the_audit_accepts_it(tmp_path):
    """bulkrelay_mta_sts: false drops Postfix's map, then stops and disables the resolver: check
    mode says so and changes nothing, a second run changes nothing, and the audit's mta-sts
    check passes as "off". The repair below turns it back on. The check and the second run
    take the role's tag alone: relay_postfix's check mode and idempotence are the converge's."""
    relay, unit = str(PROJECT / "playbooks/relay.yml"), "postfix-mta-sts-resolver"
    off = ["-e", '{"bulkrelay_mta_sts": false}']
    stop = "relay_mta_sts : Stop and disable the resolver (MTA-STS is off)"
    started = time.monotonic()
    check = ansible(relay, "--check", "--tags", "relay_mta_sts", *off)
    assert check.returncode == 0, check.stdout[-4000:]
    assert "changed: [br-lab-relay]" in task_output(check, stop)
    assert sh(RELAY, f"systemctl is-active {unit}", check=False).stdout.strip() == "active"
    run = ansible(relay, "--tags", "relay_mta_sts,relay_postfix", *off)
    assert run.returncode == 0, run.stdout[-4000:]
    assert "changed: [br-lab-relay]" in task_output(run, stop)
    assert sh(RELAY, f"systemctl is-active {unit}", check=False).stdout.strip() != "active"
    assert sh(RELAY, f"systemctl is-enabled {unit}", check=False).stdout.strip() == "disabled"
    assert "socketmap:" not in sh(RELAY, "postconf -h smtp_tls_policy_maps").stdout
    again = ansible(relay, "--tags", "relay_mta_sts", *off)
    assert again.returncode == 0 and "ok: [br-lab-relay]" in task_output(again, stop), again.stdout[-4000:]
    assert " changed=0 " in again.stdout.split("PLAY RECAP", 1)[1], again.stdout[-2000:]
    STATE["timings"].append(
        ("relay.yml without MTA-STS (check, run, again)", round(time.monotonic() - started, 1))
    )
    _, checks = audit(tmp_path, *off)
    mta_sts = checks[("postfix", "mta-sts")]
    assert mta_sts["status"] == "pass" and "lookups are off" in mta_sts["message"], mta_sts


def test_site_yml_repairs_and_the_audit_passes_again(tmp_path):
    started = time.monotonic()
    site = ansible(str(PROJECT / "site.yml"), timeout=1200)
    STATE["timings"].append(("site.yml", round(time.monotonic() - started, 1)))
    assert site.returncode == 0, site.stdout[-4000:]
    # Not site.yml's to repair: the PTR lives at the hosting provider, the listing at the
    # blacklist, and dropping mail is the operator's decision.
    dns_update("100.51.198.in-addr.arpa.", ("replace", "101", 300, "PTR", "relay.example.test."))
    set_relay_listed(False)
    sh(RELAY, "postsuper -d ALL deferred")
    # an operator would rotate the key; the lab gives it its own mtime back, to the nanosecond
    sh(RELAY, f"touch -m -d '{STATE['dkim_key_mtime']}' {DKIM_KEY}")
    assert sh(RELAY, f"stat -c %y {DKIM_KEY}").stdout.strip() == STATE["dkim_key_mtime"]
    # The poller's last result stays failed until it runs again: one pass now, as its timer
    # (every 30 s) or an operator would start it.
    poller_pass(RELAY)
    for unit in ("bulkrelay-webhooks", "postfix-mta-sts-resolver"):
        assert sh(RELAY, f"systemctl is-active {unit}", check=False).stdout.strip() == "active", unit
        assert sh(RELAY, f"systemctl is-enabled {unit}", check=False).stdout.strip() == "enabled", unit
    assert WEBHOOK_SECRET in sh(RELAY, f"cat {WEBHOOKS_TOML}").stdout
    poller = sh(RELAY, "systemctl show -p Result --value bulkrelay-bounces.service").stdout.strip()
    assert poller == "success", sh(RELAY, "journalctl -u bulkrelay-bounces.service -n 20 --no-pager").stdout
    result, checks = audit(tmp_path, "-e", f"audit__queue_max_age={QUEUE_MAX_AGE}")
    for row in STATE["rows"]:
        key = tuple(row[1].split(" ", 1))
        row += [checks.get(key, {}).get("status", "missing"), result.returncode]
    write_table()
    bad = [c for c in checks.values() if c["status"] in ("fail", "error")]
    assert result.returncode == 0 and not bad, json.dumps(bad, indent=1)
    # every check a fault turned (a warning too) is back to pass; MTA-STS is on again
    assert [row for row in STATE["rows"] if row[4] != "pass"] == [], STATE["rows"]
    assert "MTA-STS lookups in effect" in checks[("postfix", "mta-sts")]["message"]


def write_table():
    lines = [
        "| fault | audit check | status | exit | after repair | exit |",
        "| --- | --- | --- | --- | --- | --- |",
        *("| " + " | ".join(map(str, row)) + " |" for row in STATE["rows"]),
        "",
        "timings (s): " + ", ".join(f"{what} {secs}" for what, secs in STATE["timings"]),
    ]
    out = PROJECT / "reports/lab/faults.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
