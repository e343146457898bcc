import sys
from pathlib import Path

import pytest

# the scenarios' shared test helpers (labexec)
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "shared" / "tests"))
from labexec import run_audit


@pytest.fixture(scope="session")
def healthy_audit(tmp_path_factory):
    """The audit of the relay as site.yml left it: run once, read by the story (it must pass)
    and by the tamper tests (each fault must change what it says)."""
    return run_audit(tmp_path_factory.mktemp("healthy-audit"))
