"""roles/relay_sender/files/build_wheel.py: a reproducible wheel that a concurrent build never
takes away from a play copying it (two scenarios converging at once from one checkout)."""

import hashlib
import subprocess
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "roles/relay_sender/files/build_wheel.py"


def build(out: Path) -> Path:
    proc = subprocess.run(
        [sys.executable, str(BUILD), str(ROOT / "sender"), str(out)],
        capture_output=True,
        text=True,
        check=True,
    )
    return Path(proc.stdout.strip())


def test_builds_overlapping_a_reader_keep_one_whole_identical_wheel(tmp_path):
    (tmp_path / "bulkrelay-0.0.1-py3-none-any.whl").write_bytes(b"an older version")
    first = build(tmp_path)
    digest = hashlib.sha256(first.read_bytes()).hexdigest()
    seen: list[str] = []
    done = threading.Event()

    def read() -> None:  # what the copy task does while another build runs
        while not done.is_set():
            try:
                seen.append(hashlib.sha256(first.read_bytes()).hexdigest())
            except FileNotFoundError:
                seen.append("missing")

    reader = threading.Thread(target=read)
    reader.start()
    builders = [threading.Thread(target=build, args=(tmp_path,)) for _ in range(2)]
    for b in builders:
        b.start()
    for b in builders:
        b.join()
    done.set()
    reader.join()
    assert seen and set(seen) == {digest}, "a reader saw the wheel missing or different during a rebuild"
    assert sorted(p.name for p in tmp_path.iterdir()) == [first.name], "stale wheels or scratch dirs left"
