"""What the scenarios' verify tests share: run a command on a container, wait for a condition,
and run a project playbook (the audit above all) against the scenario's inventory, as an
operator runs it. A scenario's tests/conftest.py puts this folder on sys.path."""

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[3]


def sh(container, script, check=True, timeout=120, stdin=None):
    """Run a bash script on a container (docker exec); with check, a non-zero exit fails the test."""
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
    """The first true value of predicate(); a timeout fails the test naming what it waited for."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    pytest.fail(f"timed out after {timeout}s waiting for {what}")


def poller_pass(container, unit="bulkrelay-bounces.service"):
    """One pass of the bounce poller that starts after this call. `systemctl start` on a pass
    the timer already began joins it and returns its result, read from files as they were
    before the caller changed them (a CI run saw a "wrong password" pass succeed): wait that
    pass out first. A pass the timer starts after the wait sees the caller's files too.
    Returns (the start, the container's epoch second after the wait: `journalctl --since @`
    that second shows this pass and not the one waited out)."""
    wait_for(
        f"the running {unit} pass to end",
        lambda: sh(container, f"systemctl show -p ActiveState --value {unit}").stdout.strip() != "activating",
        timeout=180,
    )
    since = sh(container, "date +%s").stdout.strip()
    return sh(container, f"systemctl start {unit}", check=False), since


def ansible(*args, timeout=900):
    """ansible-playbook against the scenario's inventory with the project's ansible.cfg."""
    env = dict(os.environ, ANSIBLE_CONFIG=str(PROJECT / "ansible.cfg"))
    env.update(ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0")  # molecule forces colour on
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
