"""roles/relay_sender/files/build_wheel.py: a reproducible wheel that a concurrent build never
takes away from a play copying it (two scenarios converging at once from one checkout), built
again only when its sources change."""

import hashlib
import shutil
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "roles/relay_sender/files/build_wheel.py"


def build(out: Path, source: Path = ROOT / "sender") -> Path:
    proc = subprocess.run(
        [sys.executable, str(BUILD), str(source), str(out)],
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

    (tmp_path / ".source").unlink()  # so both builds below really build
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
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == [".source", first.name], "stale wheels or scratch dirs left"


def test_unchanged_sources_reuse_the_wheel_and_a_changed_file_rebuilds_it(tmp_path):
    source = tmp_path / "sender"
    ignore = shutil.ignore_patterns("build", "*.egg-info", "__pycache__")
    shutil.copytree(ROOT / "sender", source, ignore=ignore)
    out = tmp_path / "out"
    first = build(out, source)
    built = first.stat().st_ino
    (source / "build").mkdir()  # ignored: not part of the wheel
    (source / "build" / "junk").write_text("x")
    assert build(out, source) == first and first.stat().st_ino == built, "rebuilt unchanged sources"
    module = source / "src" / "bulkrelay" / "__init__.py"
    module.write_text(module.read_text() + "# changed\n")
    again = build(out, source)
    assert again == first and again.stat().st_ino != built, "a changed source file did not rebuild the wheel"
    with zipfile.ZipFile(again) as wheel:
        assert wheel.read("bulkrelay/__init__.py").decode().endswith("# changed\n")
