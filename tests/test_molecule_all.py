"""scripts/molecule-all.sh, the runner behind `make molecule`: scenarios two at a time, a log per
scenario, no new scenario after a failure, and a tail that names the failing test."""

import os
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "molecule-all.sh"

# A stand-in for `molecule test -s NAME`: NAME is "<label>-<seconds>"; "bad" labels fail.
FAKE_MOLECULE = """#!/bin/bash
name=$3
echo "start $name $(date +%s.%N)"
sleep "${name#*-}"
[[ $name == bad* ]] && { echo "  │ FAILED tests/test_x.py::test_$name - AssertionError"; exit 3; }
echo "end $name $(date +%s.%N)"
"""


def run(tmp_path, *scenarios, lanes="2"):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "molecule").write_text(FAKE_MOLECULE)
    (bin_dir / "molecule").chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", MOLECULE_LANES=lanes)
    proc = subprocess.run(
        ["bash", str(SCRIPT), *scenarios], cwd=tmp_path, env=env, capture_output=True, text=True, check=False
    )
    return proc, tmp_path / "reports" / "ci"


def times(log: Path) -> tuple[float, float]:
    """(start, end) of a fake scenario, from its "start NAME T" and "end NAME T" lines."""
    marks = dict(
        line.split()[1::2] for line in log.read_text().splitlines() if " start " in line or " end " in line
    )
    return float(marks["start"]), float(marks["end"])


def test_two_lanes_overlap_and_every_scenario_has_its_log(tmp_path):
    proc, logs = run(tmp_path, "long-2", "short-1", "next-1")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    _, long_end = times(logs / "molecule-long-2.log")
    short_start, _ = times(logs / "molecule-short-1.log")
    next_start, _ = times(logs / "molecule-next-1.log")
    assert short_start < long_end and next_start < long_end, "the scenarios ran one after another"
    assert "== scenario times:" in proc.stdout.splitlines()[-1]
    # each log line carries the seconds since its scenario started
    assert (logs / "molecule-long-2.log").read_text().splitlines()[-1].split()[0] == "2"


def test_a_failure_starts_nothing_new_and_the_tail_names_the_test(tmp_path):
    proc, logs = run(tmp_path, "long-2", "bad-0", "later-0")
    assert proc.returncode != 0
    assert not (logs / "molecule-later-0.log").exists(), "a scenario started after a failure"
    assert "end long-2" in (logs / "molecule-long-2.log").read_text(), "the running scenario was not finished"
    tail = proc.stdout.splitlines()[-3:]
    assert "FAILED tests/test_x.py::test_bad-0 - AssertionError" in tail, proc.stdout


def test_one_lane_runs_in_order_and_shows_the_output(tmp_path):
    proc, logs = run(tmp_path, "first-1", "second-0", lanes="1")
    assert proc.returncode == 0, proc.stderr
    _, first_end = times(logs / "molecule-first-1.log")
    second_start, _ = times(logs / "molecule-second-0.log")
    assert second_start >= first_end
    assert "start first-1" in proc.stdout


def test_no_scenario_is_a_failure(tmp_path):
    proc, _ = run(tmp_path)
    assert proc.returncode == 1
    assert "no scenario named" in proc.stderr
