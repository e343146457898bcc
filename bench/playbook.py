#!/usr/bin/env python3
"""(6) Playbook: first converge and idempotent re-run of site.yml on the lab relay.

Uses the ``default`` molecule scenario exactly as ``make test`` does (one relay container,
converge = site.yml unchanged): ``molecule create``, ``converge`` (timed: the first run,
packages from the host's apt-cacher-ng), ``converge`` again (timed: the re-run, whose recap
must say ``changed=0`` - what ``molecule idempotence`` checks), then ``destroy``. The tasks are counted from
the PLAY RECAP (ok + changed + skipped + failed).

Baseline in the same run: a bare fact-gathering play against the same container (ansible's
fixed cost per run), so the re-run can be read as "N x an empty play".

It refuses to run while the scenario is in use by someone else (container br-default-relay
exists), and always destroys what it created.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import time

import common as c

CONTAINER = "br-default-relay"
RECAP = re.compile(
    r"^(\S+)\s+:\s+ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)\s+skipped=(\d+)", re.M
)


def molecule(action: str, log: object) -> tuple[float, str, int]:
    env = {**os.environ, "PATH": f"{c.VENV_BIN}:{os.environ['PATH']}", "ANSIBLE_FORCE_COLOR": "0"}
    env["ANSIBLE_CONFIG"] = str(c.ROOT / "ansible.cfg")
    env["PY_COLORS"] = "0"
    started = time.perf_counter()
    proc = subprocess.run(
        [str(c.VENV_BIN / "molecule"), action, "-s", "default"],
        cwd=c.ROOT,
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    elapsed = time.perf_counter() - started
    log.write(f"\n===== molecule {action} -s default: rc={proc.returncode} {elapsed:.1f}s\n")  # type: ignore[attr-defined]
    log.write(proc.stdout + proc.stderr)  # type: ignore[attr-defined]
    return elapsed, proc.stdout + proc.stderr, proc.returncode


def recap(output: str) -> dict[str, int]:
    for match in RECAP.finditer(output):
        if match.group(1) == CONTAINER:
            ok, changed, unreachable, failed, skipped = (int(g) for g in match.groups()[1:])
            return {"ok": ok, "changed": changed, "unreachable": unreachable, "failed": failed,
                    "skipped": skipped}  # fmt: skip
    return {}


def container_exists() -> bool:
    proc = subprocess.run(
        ["docker", "ps", "-a", "--filter", f"name=^{CONTAINER}$", "--format", "{{.Names}}"],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise c.BenchError(f"docker ps failed: {proc.stderr.strip()}; is dockerd running (make lab-up)?")
    return CONTAINER in proc.stdout.split()


def facts_baseline() -> float:
    env = {**os.environ, "ANSIBLE_CONFIG": str(c.ROOT / "ansible.cfg")}
    started = time.perf_counter()
    proc = subprocess.run(
        [
            str(c.VENV_BIN / "ansible"),
            "all",
            "-i",
            f"{CONTAINER},",
            "-c",
            "community.docker.docker",
            "-m",
            "ansible.builtin.setup",
        ],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise c.BenchError(f"fact-gathering baseline failed: {(proc.stdout + proc.stderr).strip()[-300:]}")
    return elapsed


def run() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args()
    if container_exists():
        print(f"bench playbook: SKIPPED - {CONTAINER} exists (the default scenario is in use); run it later")
        return 0
    work = c.workdir("playbook")
    report = c.Report("playbook", "site.yml on the lab relay (molecule default): converge and re-run")
    with (work / "molecule.log").open("w") as log:
        try:
            create, out, rc = molecule("create", log)
            if rc != 0:
                raise c.BenchError(f"molecule create failed; see {work / 'molecule.log'}")
            report.figure("create", round(create, 1), "s", "container start, not the playbook")
            baseline = facts_baseline()
            report.figure(
                "baseline_fact_gathering", round(baseline, 1), "s", "ansible -m setup, same container"
            )
            first, out, rc = molecule("converge", log)
            first_recap = recap(out)
            report.figure("first_converge", round(first, 1), "s", f"rc={rc}")
            if rc != 0 or not first_recap:
                raise c.BenchError(f"first converge failed (rc={rc}); see {work / 'molecule.log'}")
            tasks = sum(first_recap[k] for k in ("ok", "changed", "skipped", "failed"))
            report.figure("tasks", tasks, "tasks", f"recap {first_recap}")
            report.figure("first_converge_changed", first_recap["changed"], "tasks")
            rerun, out, rc = molecule("converge", log)
            rerun_recap = recap(out)
            if rc != 0 or not rerun_recap:
                raise c.BenchError(f"re-run failed (rc={rc}); see {work / 'molecule.log'}")
            report.figure("rerun", round(rerun, 1), "s", f"recap {rerun_recap}")
            report.figure("rerun_vs_first", round(rerun / first, 3), "x first converge")
            report.figure("rerun_vs_fact_gathering", round(rerun / baseline, 2), "x an empty play")
            report.figure("rerun_per_task", round(rerun / max(tasks, 1) * 1000, 1), "ms/task")
            report.verdict("rerun_changed", rerun_recap["changed"], "<=", 0, "the re-run reports changed=0")
        finally:
            molecule("destroy", log)
    print(f"   log: {work / 'molecule.log'}")
    print(f"   results: {report.save()}")
    return 0


if __name__ == "__main__":
    c.main(run)
