"""Build the bulkrelay wheel reproducibly on the controller; print the wheel's path.

Usage: build_wheel.py SOURCE_DIR OUT_DIR

The source tree is copied to a scratch directory first (without build/, *.egg-info, caches), so
the checkout is never written to and two builds never share a build/ directory. With
SOURCE_DATE_EPOCH fixed, the same sources give a byte-identical wheel, which keeps the copy to
the relay (and the reinstall it triggers) idempotent.

The wheel is built in a scratch directory and renamed into OUT_DIR, so a play that is copying
the previous wheel from OUT_DIR at that moment (two molecule scenarios converging at once from
one checkout) reads a whole file, never a half-written or deleted one.

OUT_DIR/.source names the sources the wheel was built from (a digest of every file copied, and
the Python that built it): while they are unchanged the wheel is printed without a new build,
which is most of what a re-run of site.yml with nothing to change would otherwise spend here.
"""

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

EPOCH = "315532800"  # 1980-01-01, the earliest date a zip file can hold
IGNORED = ("build", "dist", "*.egg-info", "__pycache__", "*.pyc")
STAMP = ".source"


def source_digest(source: Path) -> str:
    """What the wheel is built from: every file the build copies, and the Python that builds it."""
    digest = hashlib.sha256(f"{sys.version} {EPOCH}".encode())
    ignore = shutil.ignore_patterns(*IGNORED)
    for folder, dirs, files in os.walk(source):
        skipped = ignore(folder, dirs + files)
        dirs[:] = sorted(d for d in dirs if d not in skipped)
        for name in sorted(f for f in files if f not in skipped):
            path = Path(folder, name)
            digest.update(f"\0{path.relative_to(source)}\0".encode() + path.read_bytes())
    return digest.hexdigest()


def main(source: str, out: str) -> int:
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    digest = source_digest(Path(source))
    stamp = out_dir / STAMP
    built_from, _, name = stamp.read_text().partition(" ") if stamp.exists() else ("", "", "")
    if built_from == digest and (out_dir / name).is_file():
        print(out_dir / name)
        return 0
    # scratch: the source copy; built: beside OUT_DIR, so the rename below is atomic
    with (
        tempfile.TemporaryDirectory(prefix="bulkrelay-src-") as scratch,
        tempfile.TemporaryDirectory(prefix=".build-", dir=out_dir) as built,
    ):
        tree = Path(scratch) / "sender"
        shutil.copytree(source, tree, ignore=shutil.ignore_patterns(*IGNORED))
        env = dict(os.environ, SOURCE_DATE_EPOCH=EPOCH, PIP_DISABLE_PIP_VERSION_CHECK="1")
        result = subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--wheel-dir", built, str(tree)],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            sys.stderr.write(result.stdout + result.stderr)
            return result.returncode
        wheels = sorted(Path(built).glob("bulkrelay-*.whl"))
        if len(wheels) != 1:
            sys.stderr.write(f"expected one bulkrelay wheel, pip built {[w.name for w in wheels]}\n")
            return 1
        wheel = out_dir / wheels[0].name
        os.replace(wheels[0], wheel)
        (Path(built) / STAMP).write_text(f"{digest} {wheel.name}")
        os.replace(Path(built) / STAMP, stamp)
    for stale in out_dir.glob("bulkrelay-*.whl"):
        if stale != wheel:
            stale.unlink(missing_ok=True)
    print(wheel)
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1], sys.argv[2]))
