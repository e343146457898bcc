#!/usr/bin/env python3
"""(6) Playbook: first converge and idempotent re-run of site.yml on the lab relay, against a base tree.

Uses the ``default`` molecule scenario exactly as ``make test`` does (one relay container,
converge = site.yml unchanged): ``molecule create``, ``converge`` (timed: the first run,
packages from the host's apt-cacher-ng), ``converge`` again (timed: the re-run, whose recap
must say ``changed=0`` - what ``molecule idempotence`` checks), then ``destroy``. The tasks are counted from
the PLAY RECAP (ok + changed + skipped + failed).

Baseline in the same run: the same sequence on a checkout of ``--base`` (default: main before
issue 16's playbook work, "today" in the issue's table), on its own fresh container from its
own copy of the scenario, run first; then this tree. ``rerun_vs_base`` is this tree's re-run
over the base's. A bare fact-gathering play against this tree's container (ansible's fixed cost
per run) is printed too, so the re-run can be read as "N x an empty play".

It refuses to run while the scenario is in use by someone else (container br-default-relay
exists), and always destroys what it created and removes the base checkout.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import common as c

CONTAINER = "br-default-relay"
# main before the playbook work of issue 16: the tree the "96 s, 545 ms a task" is of
BASE = "4b8317e"
RECAP = re.compile(
    r"^(\S+)\s+:\s+ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)\s+skipped=(\d+)", re.M
)


def molecule(action: str, tree: Path, log: object) -> tuple[float, str, int]:
    env = {**os.environ, "PATH": f"{c.VENV_BIN}:{os.environ['PATH']}", "ANSIBLE_FORCE_COLOR": "0"}
    env["PY_COLORS"] = "0"
    started = time.perf_counter()
    proc = subprocess.run(
        [str(c.VENV_BIN / "molecule"), action, "-s", "default"],
        cwd=tree,
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    elapsed = time.perf_counter() - started
    log.write(f"\n===== {tree}: molecule {action} -s default: rc={proc.returncode} {elapsed:.1f}s\n")  # type: ignore[attr-defined]
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


@contextlib.contextmanager
def checkout(ref: str) -> Iterator[Path]:
    """A detached worktree of ``ref`` in a scratch directory, removed afterwards."""
    scratch = Path(tempfile.mkdtemp(prefix="bulkrelay-base-"))
    tree = scratch / "tree"
    proc = subprocess.run(
        ["git", "-C", str(c.ROOT), "worktree", "add", "--detach", str(tree), ref],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise c.BenchError(f"git worktree add {ref} failed: {proc.stderr.strip()}")
    try:
        yield tree
    finally:
        subprocess.run(["git", "-C", str(c.ROOT), "worktree", "remove", "--force", str(tree)], check=False)
        subprocess.run(["rm", "-rf", str(scratch)], check=False)


def converge_twice(tree: Path, label: str, report: c.Report, log: object, work: Path) -> dict[str, float]:
    """create, converge, converge again, destroy (always) on ``tree``'s scenario."""
    prefix = f"{label}_" if label else ""
    try:
        create, out, rc = molecule("create", tree, log)
        if rc != 0:
            raise c.BenchError(f"molecule create failed for {tree}; see {work / 'molecule.log'}")
        report.figure(f"{prefix}create", round(create, 1), "s", "container start, not the playbook")
        if not label:
            baseline = facts_baseline()
            report.figure("baseline_fact_gathering", round(baseline, 1), "s", "ansible -m setup, same host")
        first, out, rc = molecule("converge", tree, log)
        first_recap = recap(out)
        report.figure(f"{prefix}first_converge", round(first, 1), "s", f"rc={rc}")
        if rc != 0 or not first_recap:
            raise c.BenchError(f"first converge of {tree} failed (rc={rc}); see {work / 'molecule.log'}")
        tasks = sum(first_recap[k] for k in ("ok", "changed", "skipped", "failed"))
        report.figure(f"{prefix}tasks", tasks, "tasks", f"recap {first_recap}")
        report.figure(f"{prefix}first_converge_changed", first_recap["changed"], "tasks")
        load = os.getloadavg()[0]
        rerun, out, rc = molecule("converge", tree, log)
        rerun_recap = recap(out)
        if rc != 0 or not rerun_recap:
            raise c.BenchError(f"re-run of {tree} failed (rc={rc}); see {work / 'molecule.log'}")
        ran = rerun_recap["ok"] + rerun_recap["changed"]
        note = f"recap {rerun_recap}, load {load:.2f} at its start"
        report.figure(f"{prefix}rerun", round(rerun, 1), "s", note)
        report.figure(f"{prefix}rerun_vs_first", round(rerun / first, 3), "x first converge")
        report.figure(f"{prefix}rerun_per_task", round(rerun / max(tasks, 1) * 1000, 1), "ms/task")
        report.figure(
            f"{prefix}rerun_per_task_run", round(rerun / max(ran, 1) * 1000, 1), "ms/task", "ok, changed"
        )
        if not label:
            report.figure("rerun_vs_fact_gathering", round(rerun / baseline, 2), "x an empty play")
        return {"rerun": rerun, "changed": rerun_recap["changed"]}
    finally:
        molecule("destroy", tree, log)


def run() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--base", default=BASE, help=f"git ref of the base tree (default {BASE}: before the change)"
    )
    parser.add_argument("--no-base", action="store_true", help="this tree only: no rerun_vs_base verdict")
    args = parser.parse_args()
    if container_exists():
        print(f"bench playbook: SKIPPED - {CONTAINER} exists (the default scenario is in use); run it later")
        return 0
    work = c.workdir("playbook")
    report = c.Report(
        "playbook", "site.yml on the lab relay (molecule default): converge and re-run vs a base tree"
    )
    with (work / "molecule.log").open("w") as log:
        base = None
        if not args.no_base:
            with checkout(args.base) as tree:
                report.data["base"] = args.base
                base = converge_twice(tree, "base", report, log, work)
            if base["changed"] != 0:
                changed = base["changed"]
                raise c.BenchError(
                    f"the base tree's re-run reports changed={changed}; see {work / 'molecule.log'}"
                )
        new = converge_twice(c.ROOT, "", report, log, work)
        report.verdict("rerun_changed", new["changed"], "<=", 0, "the re-run reports changed=0")
        if base:
            report.verdict(
                "rerun_vs_base", new["rerun"] / base["rerun"], "<=", 0.5, f"re-run vs {args.base}'s, same run"
            )
    print(f"   log: {work / 'molecule.log'}")
    print(f"   results: {report.save()}")
    return 0


if __name__ == "__main__":
    c.main(run)
