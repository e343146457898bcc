"""On the converged relay: the installed check against the lab's rbldnsd, the cron job with its
state file, syslog lines and alerts only on change, the NRPE command, the Prometheus file."""

import json
import shlex
import subprocess
import time

import dns.exception
import dns.message
import dns.query
import pytest

testinfra_hosts = ["br-dnsbl-relay"]

SETTINGS = "/etc/bulkrelay/dnsbl/settings.json"
STATE = "/var/lib/bulkrelay/dnsbl/state.json"
SPOOL = "/var/spool/lab-mail"
PROM = "/var/lib/bulkrelay/dnsbl/prometheus/bulkrelay_dnsbl.prom"
DNS = "br-dnsbl-dns"
RBLDNSD = "198.51.100.60"
RELAY_LINES = {"bl.lab.test.ip4set": "198.51.100.25", "bl.lab.test.ip6trie": "2001:db8:100::25/128"}


def on_dns(script):
    subprocess.run(["docker", "exec", DNS, "sh", "-ec", script], check=True, capture_output=True)


def set_listed(listed):
    """List or delist the relay on bl.lab.test at run time (edit the data, SIGHUP rbldnsd)."""
    for name, line in RELAY_LINES.items():
        path = f"/var/lib/lab-rbldnsd/{name}"
        on_dns(f"grep -vxF '{line}' {path} > {path}.new || true; mv {path}.new {path}")
        if listed:
            on_dns(f"echo '{line}' >> {path}")
    on_dns("systemctl reload lab-rbldnsd.service")
    # rbldnsd reloads after SIGHUP at its own pace: wait for the answer, not for a fixed time.
    wait_until_answer(listed)


def relay_listed_now():
    """True/False: does rbldnsd list the relay's IPv4 address right now (asked from this host)?"""
    query = dns.message.make_query("25.100.51.198.bl.lab.test.", "A")
    answer = dns.query.udp(query, RBLDNSD, timeout=2)
    return bool(answer.answer)


def wait_until_answer(listed, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if relay_listed_now() == listed:
                return
        except dns.exception.Timeout:
            pass
        time.sleep(0.2)
    raise AssertionError(f"rbldnsd did not {'list' if listed else 'delist'} the relay within {timeout}s")


def cron_line(host):
    lines = [
        ln
        for ln in host.file("/etc/cron.d/bulkrelay-dnsbl").content_string.splitlines()
        if ln and not ln.startswith("#") and "=" not in ln.split()[0]
    ]
    assert len(lines) == 1, lines
    fields = lines[0].split(None, 6)
    return fields[:5], fields[5], fields[6]


def run_cron(host):
    _schedule, user, command = cron_line(host)
    result = host.run(f"su -s /bin/sh {user} -c {shlex.quote(command)}")
    assert result.rc == 0, result.stderr
    return json.loads(host.file(STATE).content_string)


def mails(host):
    out = host.run(f"ls -1 {SPOOL}").stdout.split()
    return [host.file(f"{SPOOL}/{name}").content_string for name in sorted(out) if name.endswith(".eml")]


def test_cron_entry_and_settings(host):
    schedule, user, command = cron_line(host)
    assert schedule == ["17", "*", "*", "*", "*"]
    assert user == "bulkrelay-dnsbl"
    assert "/opt/bulkrelay/venv/bin/python -m bulkrelay.dnsbl cron" in command
    assert host.service("cron").is_running
    for shared in ("/etc/bulkrelay", "/var/lib/bulkrelay"):  # the sender's too: left root 0755
        folder = host.file(shared)
        assert (folder.user, folder.group, folder.mode) == ("root", "root", 0o755), shared
    settings = host.file(SETTINGS)
    assert settings.mode == 0o640 and settings.group == "bulkrelay-dnsbl"
    assert json.loads(settings.content_string)["ips"] == ["198.51.100.25", "2001:db8:100::25"]


def test_installed_plugin_against_rbldnsd(host):
    result = host.run(f"/opt/bulkrelay/venv/bin/check_dnsbl --config {SETTINGS}")
    first = result.stdout.splitlines()[0]
    assert result.rc == 2, result.stdout
    assert first.startswith(
        "DNSBL CRITICAL - 198.51.100.25 listed on bl.lab.test (127.0.0.2: Listed by the lab BL"
    )
    assert "2001:db8:100::25 listed on bl.lab.test" in first
    for zone, why in [
        ("spamhauslike.lab.test", "127.255.255.254"),
        ("dead.lab.test", "dead list"),
        ("timeout.lab.test", "timeout"),
    ]:
        assert f"{zone} (" in first and why in first.split(f"{zone} (")[1]
    assert "clean.lab.test" not in first
    assert "allowlisted: 198.51.100.25 on wl.lab.test" in result.stdout
    time_s = float(first.split("time=")[1].split("s")[0])
    assert time_s < 2 * 2  # the silent list costs one timeout, not one per query


def test_nrpe_command_runs_as_nagios(host):
    cfg = host.file("/etc/nagios/nrpe.d/bulkrelay_dnsbl.cfg").content_string
    line = next(ln for ln in cfg.splitlines() if ln.startswith("command[check_dnsbl]="))
    command = line.split("=", 1)[1]
    result = host.run(f"su -s /bin/sh nagios -c {shlex.quote(command)}")
    assert result.rc == 2 and result.stdout.startswith("DNSBL CRITICAL"), result.stdout + result.stderr
    assert host.service("nagios-nrpe-server").is_running


@pytest.fixture
def fresh(host):
    set_listed(True)
    host.run(f"rm -f {STATE} {SPOOL}/*.eml")
    yield
    set_listed(True)


def test_cron_alerts_only_on_change(host, fresh):
    state = run_cron(host)
    assert state["status"] == "CRITICAL"
    assert {(x["target"], x["zone"]) for x in state["listings"]} == {
        ("198.51.100.25", "bl.lab.test"),
        ("2001:db8:100::25", "bl.lab.test"),
    }
    assert all(x["reason"].startswith("Listed by the lab BL") for x in state["listings"])
    assert state["checked_at"].endswith("Z") and isinstance(state["errors"], list)
    sent = mails(host)
    assert len(sent) == 1
    assert (
        "To: postmaster@example.test" in sent[0]
        and "LISTED: 198.51.100.25 is now listed on bl.lab.test" in sent[0]
    )
    assert "LIST BROKEN: timeout.lab.test" in sent[0] and "LIST BROKEN: dead.lab.test" in sent[0]

    state = run_cron(host)  # unchanged: no mail
    assert len(mails(host)) == 1 and state["listings"]

    set_listed(False)
    state = run_cron(host)
    assert state["listings"] == [] and state["status"] == "UNKNOWN"  # the broken lists remain
    sent = mails(host)
    assert len(sent) == 2
    assert "delisted" in sent[1] and "DELISTED: 198.51.100.25 is no longer listed on bl.lab.test" in sent[1]
    assert not any(line.startswith("LISTED:") for line in sent[1].splitlines())

    run_cron(host)
    assert len(mails(host)) == 2

    log = host.run("journalctl -t bulkrelay-dnsbl --no-pager -o cat").stdout
    assert "event=change change=listed target=198.51.100.25 zone=bl.lab.test" in log
    assert "event=change change=delisted target=198.51.100.25 zone=bl.lab.test" in log
    assert "event=alert_sent to=postmaster@example.test" in log
    prom = host.file(PROM).content_string
    assert "bulkrelay_dnsbl_listings 0" in prom and "bulkrelay_dnsbl_status 3" in prom


def test_state_file_readable_by_the_sender(host, fresh):
    run_cron(host)
    state = host.file(STATE)
    assert state.mode == 0o644
    assert host.run(f"su -s /bin/sh nobody -c 'cat {STATE}'").rc == 0


def test_unreadable_settings_is_a_clear_unknown(host):
    result = host.run("su -s /bin/sh nobody -c /opt/bulkrelay/venv/bin/check_dnsbl")
    assert result.rc == 3
    assert result.stdout.startswith(
        "DNSBL UNKNOWN - cannot read settings file /etc/bulkrelay/dnsbl/settings.json"
    )
    assert "member of group bulkrelay-dnsbl" in result.stdout and "Traceback" not in result.stderr
