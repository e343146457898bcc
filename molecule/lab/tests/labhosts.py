"""What the lab's tests share: the hosts, how to run a command on one, how to wait, how to
run a playbook against the lab, and how to list or delist the relay on the lab's blacklist."""

import json
import os
import subprocess
import time
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import pytest

PROJECT = Path(__file__).resolve().parents[3]
RELAY, MAILHOST, APP, OUTSIDER, DNSBL = (
    "br-lab-relay",
    "br-lab-mailhost",
    "br-lab-app",
    "br-lab-outsider",
    "br-lab-dnsbl",
)
RELAY_IP, RELAY_APP_IP, BIND, DNSBL_IP = "198.51.100.101", "203.0.113.215", "198.51.100.100", "198.51.100.104"
RBL_ZONE = "/var/lib/lab-rbldnsd/bl.lab.test.ip4set"


def sh(container, script, check=True, timeout=120, stdin=None):
    """Run a bash script on a lab host (docker exec); with check, a non-zero exit fails the test."""
    result = subprocess.run(
        ["docker", "exec", "-i", container, "bash", "-c", script],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check:
        assert result.returncode == 0, f"{container}: {script}\n{result.stdout}\n{result.stderr}"
    return result


def wait_for(what, predicate, timeout=120, step=1.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    pytest.fail(f"timed out after {timeout}s waiting for {what}")


def ansible(*args, timeout=900):
    """ansible-playbook against the lab's inventory, as an operator runs it."""
    env = dict(os.environ, ANSIBLE_CONFIG=str(PROJECT / "ansible.cfg"))
    return subprocess.run(
        ["ansible-playbook", "-i", os.environ["MOLECULE_INVENTORY_FILE"], *args],
        cwd=PROJECT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def run_audit(report_dir, *extra):
    """playbooks/audit.yml; returns (the run, its checks by (check, subject))."""
    result = ansible(str(PROJECT / "playbooks/audit.yml"), "-e", f"audit__report_dir={report_dir}", *extra)
    path = Path(report_dir) / "audit.json"
    assert path.exists(), result.stdout[-3000:] + result.stderr[-2000:]
    return result, {(c["check"], c["subject"]): c for c in json.loads(path.read_text())["checks"]}


def _rbldnsd_lists_relay():
    """True/False as the lab's rbldnsd answers for the relay's address; None when it is silent."""
    name = ".".join(reversed(RELAY_IP.split("."))) + ".bl.lab.test"
    try:
        return bool(dns.query.udp(dns.message.make_query(name, "A"), DNSBL_IP, timeout=2).answer)
    except dns.exception.Timeout:
        return None


def set_relay_listed(listed):
    """List (or delist) the relay on bl.lab.test and wait until rbldnsd answers so: a reload
    is asynchronous, and a check that runs before it would see the old zone."""
    change = f"echo {RELAY_IP} >> {RBL_ZONE}" if listed else f"sed -i '/^{RELAY_IP}$/d' {RBL_ZONE}"
    sh(DNSBL, f"{change} && systemctl reload lab-rbldnsd")
    wait_for(f"rbldnsd to answer listed={listed}", lambda: _rbldnsd_lists_relay() is listed, timeout=30)
