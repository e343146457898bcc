"""Shared test helpers. Test modules never import each other; they use these (as fixtures,
or, where a list of cases is needed while collecting, as functions imported from here)."""

from __future__ import annotations

import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

PIP_DOWNLOAD = (sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps", "-q")
SDIST_CACHE = Path(__file__).resolve().parent.parent / ".pytest_cache" / "bulkrelay-sdists"


def _norm(text: str) -> str:  # sdist file names vary: flufl.bounce-4.0, flufl_bounce-6.0.0
    return text.replace("-", "_").replace(".", "_").lower()


def fetch_sdist(requirement: str) -> Path:
    """The sdist tarball of ``requirement`` ("name==version"), downloaded from PyPI once.

    A failed download fails the test with pip's own words: a corpus that cannot be fetched
    must never turn into a silent skip. Nothing is unpacked into the tree (yamllint and ruff
    read every file below the project).
    """
    name, _, version = requirement.partition("==")
    SDIST_CACHE.mkdir(parents=True, exist_ok=True)

    def cached() -> list[Path]:
        return [p for p in SDIST_CACHE.glob("*.tar.gz") if _norm(p.name) == _norm(f"{name}-{version}.tar.gz")]

    if cached():
        return cached()[0]
    proc = subprocess.run(
        [*PIP_DOWNLOAD, requirement, "-d", str(SDIST_CACHE)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0 or not cached():
        pytest.fail(
            f"could not fetch the {requirement} sdist from PyPI (pip download said: "
            f"{proc.stderr.strip()[-400:] or 'nothing'}); the test needs PyPI or a pip mirror"
        )
    return cached()[0]


def read_sdist(requirement: str) -> dict[str, bytes]:
    """The files of ``requirement``'s sdist by their path inside it (without the top folder)."""
    files: dict[str, bytes] = {}
    with tarfile.open(fetch_sdist(requirement)) as tar:
        for member in tar.getmembers():
            if member.isfile():
                data = tar.extractfile(member)
                files[member.name.partition("/")[2]] = data.read() if data else b""
    return files


@pytest.fixture(scope="session")
def pypi_sdist():
    """``pypi_sdist("name==version")`` -> {path in the sdist: bytes}, fetched from PyPI at test time."""
    return read_sdist
