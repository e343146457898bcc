"""The roles' apt tasks are skipped on a re-run: playbooks/tasks/installed_packages.yml reads
which packages dpkg holds fully installed (run by ansible-playbook on this host's real
dpkg-query, pointed at a dpkg database written here), and each role's apt task, taken from its
tasks file as it is, is skipped only when every package it names is in that list.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

PROJECT = Path(__file__).resolve().parents[1]
READ = PROJECT / "playbooks/tasks/installed_packages.yml"
# the package each state leaves: only "installed" counts, whatever else dpkg remembers
STATUS = {
    "alpha": "install ok installed",
    "beta": "deinstall ok config-files",
    "gamma": "install ok half-configured",
    "delta": "install ok unpacked",
    "epsilon": "install ok triggers-pending\nTriggers-Pending: ldconfig",
    "zeta": "hold ok installed",
}

pytestmark = pytest.mark.skipif(not shutil.which("dpkg-query"), reason="needs a Debian host (dpkg)")


def playbook(tmp_path: Path, tasks: list, play_vars: dict, *args: str, env: dict | None = None) -> list[dict]:
    """Each task's result on localhost: [{name, skipped, result}], in order."""
    play_vars = {"ansible_python_interpreter": sys.executable, **play_vars}
    play = [
        {
            "hosts": "localhost",
            "connection": "local",
            "gather_facts": False,
            "vars": play_vars,
            "tasks": tasks,
        }
    ]
    (tmp_path / "play.yml").write_text(yaml.safe_dump(play, sort_keys=False))
    env = dict(
        os.environ,
        **(env or {}),
        ANSIBLE_STDOUT_CALLBACK="ansible.builtin.json",
        ANSIBLE_LOAD_CALLBACK_PLUGINS="1",
        ANSIBLE_CALLBACKS_ENABLED="ansible.builtin.json",  # no profile_tasks line before the JSON
    )
    ansible = Path(sys.executable).parent / "ansible-playbook"
    cmd = [str(ansible), "-i", "localhost,", str(tmp_path / "play.yml"), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=PROJECT, env=env, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = []
    for task in json.loads(proc.stdout)["plays"][0]["tasks"]:
        result = task["hosts"]["localhost"]
        results.append(
            {"name": task["task"]["name"], "skipped": result.get("skipped", False), "result": result}
        )
    return results


def dpkg_database(tmp_path: Path) -> Path:
    admindir = tmp_path / "dpkg"
    admindir.mkdir()
    stanzas = [
        f"Package: {name}\nStatus: {status}\nVersion: 1.0\nArchitecture: all\n"
        f"Maintainer: Test <test@example.test>\nDescription: {name}\n"
        for name, status in STATUS.items()
    ]
    (admindir / "status").write_text("\n".join(stanzas))
    return admindir


@pytest.mark.parametrize("check", [False, True])
def test_the_list_holds_the_fully_installed_packages_read_once(tmp_path, check):
    # imported twice, as site.yml's plays do: the second read is skipped, the list kept
    read = [{"name": "read", "ansible.builtin.import_tasks": str(READ)}]
    show = [{"name": "show", "ansible.builtin.debug": {"var": "bulkrelay_installed_packages"}}]
    env = {"DPKG_ADMINDIR": str(dpkg_database(tmp_path))}
    results = playbook(tmp_path, read + show + read + show, {}, *(["--check"] * check), env=env)
    assert [r["skipped"] for r in results] == [False, False, False, True, True, False]
    for shown in (results[2], results[5]):
        assert sorted(shown["result"]["bulkrelay_installed_packages"]) == ["alpha", "zeta"]


def apt_tasks() -> dict[str, dict]:
    """Every apt task of the roles, by role, its module swapped for a debug that shows the list
    apt would be given (so nothing is installed); its vars and conditions kept as they are."""
    tasks = {}
    for path in sorted(PROJECT.glob("roles/*/tasks/*.yml")):
        for task in yaml.safe_load(path.read_text()) or []:
            if "ansible.builtin.apt" in task:
                apt = task.pop("ansible.builtin.apt")
                task["ansible.builtin.debug"] = {"msg": apt["name"]}
                tasks[f"{path.parts[-3]}: {task['name']}"] = task
    return tasks


def role_defaults() -> dict:
    return {
        # the package list relay_sender's install takes from its defaults; Dovecot's task is on
        "relay_sender__packages": yaml.safe_load(
            (PROJECT / "roles/relay_sender/defaults/main.yml").read_text()
        )["relay_sender__packages"],
        "relay_postfix__submission_enabled": True,
    }


def test_every_apt_task_is_skipped_only_when_all_its_packages_are_installed(tmp_path):
    tasks = apt_tasks()
    assert len(tasks) >= 8, tasks.keys()  # firewall, dkim, resolver, mta_sts, postfix x2, sender, monitor
    # without the list (a role run from another playbook) every apt task runs: what it installs
    run = playbook(tmp_path, list(tasks.values()), role_defaults())
    assert [r["skipped"] for r in run] == [False] * len(tasks)
    packages = {name: r["result"]["msg"] for name, r in zip(tasks, run, strict=True)}
    assert all(isinstance(p, list) and p for p in packages.values()), packages
    everything = sorted({p for names in packages.values() for p in names})

    every_one = playbook(
        tmp_path, list(tasks.values()), {**role_defaults(), "bulkrelay_installed_packages": everything}
    )
    assert [r["name"] for r in every_one if not r["skipped"]] == []

    # each task's last package missing (and only that): every task runs again
    last = {names[-1] for names in packages.values()}
    one_missing = [p for p in everything if p not in last] + ["unrelated"]
    run = playbook(
        tmp_path, list(tasks.values()), {**role_defaults(), "bulkrelay_installed_packages": one_missing}
    )
    assert [r["name"] for r in run if r["skipped"]] == []
