"""The audit's outbound TLS policy check (smtp_tls_security_level and the per-domain overrides
in smtp_tls_policy_maps) and its DKIM key age check: each passes, warns or fails on what it
exists for, and is "could not tell" on what it cannot read."""

import os
import subprocess
import time

import pytest

from bulkrelay import audit, tlspolicy

POSTCONF = """myhostname = relay.example.test
inet_interfaces = loopback-only
mynetworks = 127.0.0.0/8 [::1]/128
smtpd_relay_restrictions = permit_mynetworks, permit_sasl_authenticated, reject
smtp_tls_security_level = {level}
smtp_tls_policy_maps = {maps}
"""
NOW = 1_796_036_400.0


def ok(stdout="", rc=0, stderr=""):
    return {"rc": rc, "stdout": stdout, "stderr": stderr}


def postconf(level="may", maps=tlspolicy.TABLE):
    return ok(POSTCONF.format(level=level, maps=maps))


def dump(**overrides):
    """`postmap -s` output: key TAB value per line."""
    return ok("".join(f"{domain}\t{level}\n" for domain, level in overrides.items()))


def test_a_global_level_of_none_fails():
    checks = {r.subject: r for r in audit.judge_postfix(postconf(level="none"), "relay.example.test")}
    result = checks["smtp_tls_security_level"]
    assert result.status == "fail" and "clear text" in result.message
    assert "smtp_tls_security_level = may" in result.fix


@pytest.mark.parametrize(
    ("level", "maps", "table", "words"),
    [
        ("may", "", None, "no per-domain TLS overrides: every domain gets may"),
        ("may", tlspolicy.TABLE, dump(), "per-domain TLS overrides: none; none below"),
        ("may", tlspolicy.TABLE, dump(**{"partner.example": "encrypt"}), "partner.example (encrypt)"),
        # may under a global may changes nothing
        ("may", tlspolicy.TABLE, dump(**{"broken.example": "may"}), "broken.example (may); none below"),
        (
            "dane",
            f"{tlspolicy.TABLE}, socketmap:inet:127.0.0.1:8461:postfix",
            dump(**{"partner.example": "secure"}),
            "(then the MTA-STS socketmap: see the mta-sts check)",
        ),
        (
            "may",
            f"{tlspolicy.TABLE}, hash:/etc/postfix/other",
            dump(),
            "also consults hash:/etc/postfix/other, not read by the audit",
        ),
    ],
)
def test_overrides_at_or_above_the_global_level_pass(level, maps, table, words):
    result = audit.judge_tls_policy(postconf(level, maps), table)
    assert result.status == "pass" and words in result.message, result.message


def test_domains_overridden_below_the_global_level_are_a_warning_that_names_them():
    table = dump(**{"partner.example": "secure", "broken.example": "may", "legacy.example": "none"})
    result = audit.judge_tls_policy(postconf("encrypt"), table)
    assert result.status == "warn"
    assert result.message.startswith(
        "mail to broken.example (may), legacy.example (none) may leave in clear text"
    )
    assert "partner.example" not in result.message and "bulkrelay_tls_policy_overrides" in result.fix
    assert result.details["lowered"] == {"broken.example": "may", "legacy.example": "none"}
    # under a global may only none lowers anything
    result = audit.judge_tls_policy(postconf("may"), table)
    assert result.status == "warn" and "mail to legacy.example (none) may" in result.message


@pytest.mark.parametrize(
    ("conf", "table", "words"),
    [
        (ok("", rc=1, stderr="postconf: fatal: open /etc/postfix/main.cf"), dump(), "postconf failed"),
        (ok("smtp_tls_security_level = may\n"), dump(), "postconf failed"),  # the maps line missing
        (None, dump(), "postconf failed"),
        (
            postconf(),
            ok("", rc=1, stderr="postmap: fatal: open /etc/postfix/tls_policy: No such file or directory"),
            "No such file",
        ),
        (postconf(), None, f"postmap -s {tlspolicy.TABLE} failed"),
        (postconf(maps="hash:/etc/postfix/my_tls"), dump(), "does not hold texthash:/etc/postfix/tls_policy"),
    ],
)
def test_what_cannot_be_read_is_could_not_tell(conf, table, words):
    result = audit.judge_tls_policy(conf, table)
    assert result.status == "error" and result.message.startswith("could not tell"), result.message
    assert words in result.message


def stat(*paths):
    """What the audit reads on the relay: `stat -c '%Y %n' <key files>` (rc 1 when one is missing)."""
    proc = subprocess.run(["stat", "-c", "%Y %n", *paths], capture_output=True, text=True, check=False)
    return {"rc": proc.returncode, "stdout": proc.stdout, "stderr": proc.stderr}


def test_dkim_key_age_passes_warns_and_cannot_tell(tmp_path):
    fresh, old, gone = (tmp_path / f"{name}.private" for name in ("fresh", "old", "gone"))
    now = time.time()
    fresh.write_text("key")
    old.write_text("key")
    os.utime(fresh, (now - 10 * 86400, now - 10 * 86400))
    os.utime(old, (now - 181 * 86400, now - 181 * 86400))
    files = {"fresh.example": str(fresh), "old.example": str(old), "gone.example": str(gone)}
    raw = stat(*files.values())
    assert raw["rc"] == 1  # stat reads the others and says which one it could not
    results = {r.subject: r for r in audit.judge_dkim_key_age(raw, files, now, 180)}
    assert results["fresh.example"].status == "pass"
    assert results["fresh.example"].message == "the DKIM key of fresh.example is 10 days old (limit 180)"
    assert results["old.example"].status == "warn"
    assert f"({old}) is 181 days old (limit 180)" in results["old.example"].message
    assert "rotate" in results["old.example"].fix
    assert results["gone.example"].status == "error"
    assert results["gone.example"].message.startswith(f"could not tell: stat {gone} failed: stat: cannot")
    # a shorter limit warns about the younger key too; none read at all is could-not-tell for each
    assert [r.status for r in audit.judge_dkim_key_age(stat(str(fresh)), {"f": str(fresh)}, now, 7)] == [
        "warn"
    ]
    assert {r.status for r in audit.judge_dkim_key_age(None, files, now, 180)} == {"error"}
    assert audit.judge_dkim_key_age(stat(str(fresh)), {}, now, 180) == []


def test_the_posture_judge_runs_both_checks():
    params = {
        "raw": {
            "postconf": postconf("encrypt"),
            "tls_policy": dump(**{"broken.example": "may"}),
            "dkim_keys": ok(f"{int(NOW - 400 * 86400)} /etc/dkimkeys/example.test/bulk2026.private\n"),
        },
        "now": NOW,
        "fqdn": "relay.example.test",
        "required_ports": [],
        "allowed_ports": [22],
        "units": {},
        "queue_max_age": 3600,
        "webhook_max_age": 3600,
        "dkim_key_files": {"example.test": "/etc/dkimkeys/example.test/bulk2026.private"},
        "dkim_key_max_age_days": 365,
    }
    results = {(r.check, r.subject): r for r in audit.judge_posture(params, source=None)}
    assert results[("postfix", "smtp_tls_policy_maps")].status == "warn"
    assert results[("dkim-key-age", "example.test")].status == "warn"
    assert "400 days old (limit 365)" in results[("dkim-key-age", "example.test")].message
    # a command that was not run is could-not-tell, never a crash
    assert results[("firewall", "table inet bulkrelay")].status == "error"
