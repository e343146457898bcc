"""roles/relay_sender/tasks/install.yml's security-fix check, run by ansible-playbook on this
(Debian) host against its real dpkg: the install stops naming each package older than its
fixed revision, and passes when none is. The two tasks are taken from the role's file as they
are, so the test runs what a relay runs.
"""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

PROJECT = Path(__file__).resolve().parents[1]
INSTALL = PROJECT / "roles/relay_sender/tasks/install.yml"
TASKS = ("Compare the installed revisions", "Stop when a package lacks its security fix")

pytestmark = pytest.mark.skipif(not shutil.which("dpkg-query"), reason="needs a Debian host (dpkg)")


def installed(package: str) -> str:
    query = ["dpkg-query", "--show", "--showformat=${Version}", package]
    return subprocess.run(query, capture_output=True, text=True, check=True).stdout


def check(tmp_path: Path, fixed: dict[str, str]) -> subprocess.CompletedProcess:
    tasks = [t for t in yaml.safe_load(INSTALL.read_text()) if t["name"].startswith(TASKS)]
    assert len(tasks) == 2, "the security-fix tasks were renamed: update TASKS"
    play = [{"hosts": "localhost", "connection": "local", "gather_facts": False,
             "vars": {"relay_sender__fixed_packages": fixed, "ansible_python_interpreter": sys.executable},
             "tasks": tasks}]  # fmt: skip
    (tmp_path / "play.yml").write_text(yaml.safe_dump(play, sort_keys=False))
    ansible = Path(sys.executable).parent / "ansible-playbook"
    return subprocess.run(
        [str(ansible), "-i", "localhost,", str(tmp_path / "play.yml")],
        capture_output=True,
        text=True,
        check=False,
    )


def test_none_older_passes(tmp_path):
    run = check(tmp_path, {"dpkg": "1.0", "python3": installed("python3")})
    assert run.returncode == 0, run.stdout + run.stderr


def test_one_older_stops_naming_it_and_the_upgrade(tmp_path):
    run = check(tmp_path, {"dpkg": "1.0", "python3": "99.0"})
    assert run.returncode != 0
    assert f"python3 {installed('python3')} is older than 99.0" in run.stdout
    assert "--only-upgrade python3" in run.stdout and "--only-upgrade dpkg" not in run.stdout


def test_two_older_name_both(tmp_path):
    run = check(tmp_path, {"dpkg": "99.0", "python3": "99.0~rc1"})
    assert run.returncode != 0
    assert f"dpkg {installed('dpkg')} is older than 99.0," in run.stdout
    assert f"python3 {installed('python3')} is older than 99.0~rc1," in run.stdout


def test_a_package_not_installed_fails_the_check(tmp_path):
    run = check(tmp_path, {"bulkrelay-no-such-package": "1.0"})
    assert run.returncode != 0 and "no packages found" in (run.stdout + run.stderr)
