"""scripts/step.sh, the step runner of `make lab`: one line per step, the full output in the
log, a failure shown from its first error, and the command's stdin passed on."""

import subprocess
from pathlib import Path

STEP = Path(__file__).resolve().parent.parent / "scripts" / "step.sh"


def run_steps(tmp_path, script, stdin=""):
    log = tmp_path / "make-lab.log"
    body = f"set -euo pipefail\nlog_file={log}\nsource {STEP}\n{script}\n"
    proc = subprocess.run(
        ["bash", "-c", body], input=stdin, capture_output=True, text=True, timeout=60, check=False
    )
    return proc, log.read_text() if log.exists() else ""


def test_a_step_logs_its_output_and_says_nothing_itself(tmp_path):
    proc, log = run_steps(
        tmp_path,
        'step "two tasks" bash -c \'echo "TASK [a : one]"; echo "TASK [b : two]"\'\n'
        'echo "took=$STEP_SECONDS lines=$(wc -l <<<"$STEP_OUTPUT")"',
    )
    assert proc.returncode == 0, proc.stderr
    took, lines = proc.stdout.split()
    assert took.removeprefix("took=").isdigit() and lines == "lines=2", proc.stdout
    assert "===== two tasks\nTASK [a : one]\nTASK [b : two]\n" in log


def test_the_command_reads_the_callers_stdin(tmp_path):
    # bash gives a background command /dev/null as stdin unless told otherwise: the invoice
    # step of `make lab` pipes a Python script in this way
    proc, log = run_steps(tmp_path, 'step "read stdin" cat <<<"invoice script"', stdin="")
    assert proc.returncode == 0, proc.stderr
    assert "invoice script" in log
    proc, log = run_steps(tmp_path, 'step "read stdin" cat', stdin="from the caller\n")
    assert "from the caller" in log


def test_a_failed_step_shows_its_output_from_the_first_error_and_stops(tmp_path):
    proc, log = run_steps(
        tmp_path,
        'step "bad" bash -c \'echo noise; echo "fatal: [relay]: FAILED! => boom"; echo detail; exit 3\'\n'
        "echo never",
    )
    assert proc.returncode == 3
    assert proc.stdout.startswith("FAILED bad after ")
    assert "fatal: [relay]: FAILED! => boom\ndetail\n" in proc.stdout
    assert "noise" not in proc.stdout and "never" not in proc.stdout
    assert "noise" in log  # the log keeps everything


def test_a_failure_without_an_error_line_shows_all_of_its_output(tmp_path):
    proc, _ = run_steps(tmp_path, "step \"quiet\" bash -c 'echo first; echo second; exit 1'")
    assert proc.returncode == 1
    assert "first\nsecond\n" in proc.stdout
