"""scripts/apt-get.sh: the project's scripts wait (bounded, and say so) while another package
manager holds apt's locks, instead of failing at once. A fake apt-get plays the other party."""

import re
import subprocess
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
WRAPPER = PROJECT / "scripts" / "apt-get.sh"
LISTS_HELD = "E: Could not get lock /var/lib/apt/lists/lock. It is held by process 42 (unattended-upgr)"
DPKG_WAIT = (
    "Waiting for cache lock: Could not get lock /var/lib/dpkg/lock-frontend. "
    "It is held by process 7 (apt-get)..."
)


def fake_apt(tmp_path, script):
    """An apt-get on PATH that logs its arguments and runs ``script`` (bash; $n = call number)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "apt-get"
    fake.write_text(
        f'#!/usr/bin/env bash\necho "$*" >>{tmp_path}/calls\nn=$(wc -l <{tmp_path}/calls)\n' + script
    )
    fake.chmod(0o755)
    return bin_dir


def run(tmp_path, bin_dir, *args, timeout="300"):
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "BULKRELAY_APT_LOCK_TIMEOUT": timeout,
        "BULKRELAY_APT_LOCK_POLL": "0.1",
    }
    out = subprocess.run(
        [str(WRAPPER), *args], capture_output=True, text=True, env=env, check=False, timeout=30
    )
    calls_file = tmp_path / "calls"
    return out, calls_file.read_text().splitlines() if calls_file.exists() else []


def test_update_retries_the_list_lock_and_says_it_waits(tmp_path):
    bin_dir = fake_apt(tmp_path, f'((n < 3)) && {{ echo "{LISTS_HELD}" >&2; exit 100; }}\nexit 0\n')
    out, calls = run(tmp_path, bin_dir, "update", "-q")
    assert out.returncode == 0, out.stderr
    assert calls == ["-o DPkg::Lock::Timeout=300 update -q"] * 3
    assert out.stderr == (
        "apt: waiting up to 300s for another package manager "
        "(/var/lib/apt/lists/lock. It is held by process 42 (unattended-upgr))\n"
    )


def test_apt_own_wait_for_the_dpkg_lock_is_said_once(tmp_path):
    bin_dir = fake_apt(tmp_path, f'echo "{DPKG_WAIT}"; echo "{DPKG_WAIT}"; echo Done\nexit 0\n')
    out, calls = run(tmp_path, bin_dir, "install", "-y", "-q", "swaks")
    assert out.returncode == 0 and out.stdout == ""
    assert calls == ["-o DPkg::Lock::Timeout=300 install -y -q swaks"]
    assert out.stderr.count("apt: waiting up to 300s") == 1
    assert "/var/lib/dpkg/lock-frontend. It is held by process 7 (apt-get))" in out.stderr


def test_the_wait_is_bounded_and_ends_with_apt_error(tmp_path):
    bin_dir = fake_apt(tmp_path, f'echo "{LISTS_HELD}" >&2\nexit 100\n')
    started = time.monotonic()
    out, calls = run(tmp_path, bin_dir, "update", timeout="2")
    assert out.returncode == 100 and out.stderr.endswith(LISTS_HELD + "\n")
    assert 1 <= time.monotonic() - started < 6 and len(calls) > 2  # bash counts whole seconds


def test_other_errors_are_not_retried(tmp_path):
    bin_dir = fake_apt(tmp_path, 'echo "E: Unable to locate package nosuch" >&2\nexit 100\n')
    out, calls = run(tmp_path, bin_dir, "install", "-y", "nosuch")
    assert out.returncode == 100 and len(calls) == 1
    assert out.stderr == "E: Unable to locate package nosuch\n"


def test_every_script_runs_apt_get_through_the_wrapper():
    listed = subprocess.run(
        ["git", "ls-files", "*.sh"], cwd=PROJECT, capture_output=True, text=True, check=True
    ).stdout.split()
    scripts = [PROJECT / name for name in listed if PROJECT / name != WRAPPER]
    assert PROJECT / "lab" / "lab.sh" in scripts
    direct = [
        f"{p.relative_to(PROJECT)}: {line.strip()}"
        for p in scripts
        for line in p.read_text().splitlines()
        if re.search(r"(^|[\s;&|(])apt-get\s+(-\S+\s+)*(update|install|upgrade)\b", line.split("#")[0])
    ]
    assert not direct, "call scripts/apt-get.sh instead (it waits for apt's locks):\n" + "\n".join(direct)
